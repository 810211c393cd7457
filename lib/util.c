/* util.c - error state, number formats (bf16, f16, fp8 e4m3) and file helpers
 * shared by the whole library. */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static _Thread_local char last_error[1024];

int glm_err(int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

const char *glm_last_error(void) { return last_error; }

const char *glm_status_str(int status) {
    switch (status) {
    case GLM_OK: return "ok";
    case GLM_WARN_KV_FULL: return "KV cache full";
    case GLM_ERR_ARG: return "invalid argument";
    case GLM_ERR_IO: return "I/O error";
    case GLM_ERR_FORMAT: return "bad format";
    case GLM_ERR_OOM: return "out of memory";
    case GLM_ERR_NOT_IMPLEMENTED: return "not implemented";
    case GLM_ERR_CUDA: return "CUDA error";
    case GLM_ERR_UNSUPPORTED: return "unsupported";
    default: return "unknown status";
    }
}

/* ---- numbers ---- */
float glm_fp8_lut[256];

float glm_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t glm_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

float glm_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 31, man = h & 1023;
    float f;
    if (exp == 0) {
        f = ldexpf((float)man, -24);
        return sign ? -f : f;
    }
    if (exp == 31) {
        uint32_t u = sign | 0x7f800000u | (man << 13);
        memcpy(&f, &u, 4);
        return f;
    }
    uint32_t u = sign | ((exp + 112) << 23) | (man << 13);
    memcpy(&f, &u, 4);
    return f;
}

uint16_t glm_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    float a = fabsf(f);
    if (isnan(f)) return sign | 0x7e00;
    if (a >= 65520.0f) return sign | 0x7c00;
    if (a < 6.103515625e-05f) { /* subnormal: multiples of 2^-24 */
        return sign | (uint16_t)lrintf(a * 16777216.0f);
    }
    int e;
    float m = frexpf(a, &e); /* a = m * 2^e, m in [0.5,1) */
    int exp = e - 1 + 15;
    uint32_t man = (uint32_t)lrintf((m * 2.0f - 1.0f) * 1024.0f);
    if (man == 1024) { man = 0; exp++; }
    if (exp >= 31) return sign | 0x7c00;
    return sign | (uint16_t)(exp << 10) | (uint16_t)man;
}

float glm_fp8e4m3_to_f32(uint8_t b) {
    int sign = b >> 7, exp = (b >> 3) & 15, man = b & 7;
    float f;
    if (exp == 15 && man == 7) return NAN;
    if (exp == 0) f = ldexpf((float)man, -9);
    else f = ldexpf(1.0f + man / 8.0f, exp - 7);
    return sign ? -f : f;
}

void glm_numbers_init(void) {
    static int done;
    if (done) return;
    for (int i = 0; i < 256; i++) glm_fp8_lut[i] = glm_fp8e4m3_to_f32((uint8_t)i);
    done = 1;
}

/* ---- files ---- */
int glm_read_file(const char *path, char **data, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return glm_err(GLM_ERR_IO, "%s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (cap - n < 65536) {
            cap = cap ? cap * 2 : 1 << 16;
            char *t = realloc(buf, cap + 1);
            if (!t) { free(buf); fclose(f); return glm_err(GLM_ERR_OOM, "%s: out of memory", path); }
            buf = t;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) { free(buf); return glm_err(GLM_ERR_IO, "%s: read error", path); }
    buf[n] = 0;
    *data = buf;
    if (len) *len = n;
    return GLM_OK;
}

int glm_path_join(char *buf, size_t cap, const char *dir, const char *name) {
    size_t dl = strlen(dir);
    while (dl > 1 && dir[dl - 1] == '/') dl--;
    size_t need = dl + 1 + strlen(name);
    if (need >= cap || dl > INT_MAX) {
        if (cap) buf[0] = 0;
        return glm_err(GLM_ERR_ARG, "%.256s.../%.256s: path too long (%zu bytes, at most %zu)", dir, name, need,
                       cap ? cap - 1 : 0);
    }
    snprintf(buf, cap, "%.*s/%s", (int)dl, dir, name);
    return GLM_OK;
}

double glm_now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}
