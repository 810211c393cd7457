/* common.c - helpers shared by the command-line tools (see common.h). */
#include "common.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double tool_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int tool_parse_ids(const char *s, int32_t **ids, int *n, char *err, size_t err_len) {
    int cap = 64, k = 0;
    int32_t *v = malloc(sizeof *v * (size_t)cap);
    if (!v) { snprintf(err, err_len, "out of memory"); return -1; }
    const char *p = s;
    while (*p) {
        if (*p == ',' || *p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '[' || *p == ']') { p++; continue; }
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < 0 || x > INT32_MAX) {
            snprintf(err, err_len, "not a token id at byte %ld: '%.12s'", (long)(p - s), p);
            free(v);
            return -1;
        }
        if (k == cap) {
            cap *= 2;
            int32_t *nv = realloc(v, sizeof *v * (size_t)cap);
            if (!nv) { free(v); snprintf(err, err_len, "out of memory"); return -1; }
            v = nv;
        }
        v[k++] = (int32_t)x;
        p = end;
    }
    *ids = v;
    *n = k;
    return 0;
}

int tool_parse_int_list(const char *s, int **vals, int *n) {
    int32_t *ids;
    char err[128];
    if (tool_parse_ids(s, &ids, n, err, sizeof err)) return -1;
    *vals = (int *)ids;
    return 0;
}

int tool_int(const char *flag, const char *v, long lo, long hi) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "error: %s expects an integer in [%ld, %ld], got '%s'\n", flag, lo, hi, v);
        exit(EXIT_USAGE);
    }
    return (int)x;
}

float tool_float(const char *flag, const char *v) {
    char *end;
    errno = 0;
    float x = strtof(v, &end);
    if (!*v || *end || errno || x != x) {
        fprintf(stderr, "error: %s expects a number, got '%s'\n", flag, v);
        exit(EXIT_USAGE);
    }
    return x;
}

const char *tool_arg(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "error: %s needs a value (see --help)\n", argv[*i]);
        exit(EXIT_USAGE);
    }
    return argv[++*i];
}

const char *tool_default_model(void) {
    static char buf[4096];
    const char *env = getenv("GLM_MODEL");
    if (env && *env) return env;
    /* <repo>/build/bin/glm-x -> <repo>/models/glm-tiny */
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 64);
    if (n > 0) {
        buf[n] = 0;
        for (int up = 0; up < 3; up++) {
            char *slash = strrchr(buf, '/');
            if (!slash) break;
            *slash = 0;
        }
        strcat(buf, "/models/glm-tiny");
        if (access(buf, F_OK) == 0) return buf;
    }
    return "models/glm-tiny";
}

int tool_progress(uint64_t done, uint64_t total, void *user) {
    (void)user;
    if (!isatty(2) || total == 0) return 0;
    int w = 40, fill = (int)(w * (double)done / (double)total);
    fprintf(stderr, "\rloading [%.*s%*s] %5.1f%% %.2f/%.2f GB", fill, "########################################", w - fill, "",
            100.0 * (double)done / (double)total, done / 1e9, total / 1e9);
    if (done >= total) fputc('\n', stderr);
    return 0;
}

glm_model *tool_load_model(const char *prog, const char *dir) {
    glm_model_params mp = glm_model_default_params();
    mp.progress = tool_progress;
    glm_model *m = NULL;
    if (glm_model_load(dir, &mp, &m) != GLM_OK) {
        fprintf(stderr, "%s: error: cannot load model: %s\n", prog, glm_last_error());
        return NULL;
    }
    return m;
}

char *tool_read_text(const char *prog, const char *path, size_t *len) {
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) { fprintf(stderr, "%s: error: %s: %s\n", prog, path, strerror(errno)); return NULL; }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        if (n == cap) {
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        if (r == 0) break;
        n += r;
    }
    int bad = ferror(f);
    if (f != stdin) fclose(f);
    if (!buf || bad) { free(buf); fprintf(stderr, "%s: error: %s: read failed\n", prog, path); return NULL; }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

glm_device tool_device(const char *v) {
    if (strcmp(v, "cpu") == 0) return GLM_DEVICE_CPU;
    if (strcmp(v, "cuda") == 0 || strcmp(v, "gpu") == 0) return GLM_DEVICE_CUDA;
    fprintf(stderr, "error: --device expects cpu or cuda, got '%s'\n", v);
    exit(EXIT_USAGE);
}

glm_device tool_default_device(void) {
    return glm_cuda_available() ? GLM_DEVICE_CUDA : GLM_DEVICE_CPU;
}
