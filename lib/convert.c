/* convert.c - BF16 -> FP8 checkpoint conversion (per-channel or 128x128 block scales).
 * The output is planned up front (every tensor's shard and byte offset follows from the
 * input's shapes), each shard's header is written first, and then a pool of threads
 * takes pieces of the input in file order (a few MB of rows, or of bytes to copy) and
 * writes each result at its place with pwrite: memory stays at a few MB a thread, and the
 * whole model is never in RAM. */
#include "convert.h"
#include "json.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define UNIT_BYTES (4u << 20)                   /* input bytes a work piece aims at */
#define DEFAULT_SHARD_BYTES 5000000000ull       /* the Hugging Face default of "5GB" */

/* ---- quantisers ---- */

int64_t glm_quant_channel(const float *w, int64_t rows, int64_t cols, uint8_t *q, uint16_t *s_bf16) {
    for (int64_t r = 0; r < rows; r++) {
        const float *x = w + r * cols;
        float amax = 0;
        int finite = 1;
        for (int64_t k = 0; k < cols; k++) {
            float a = fabsf(x[k]);
            finite &= a <= 3.402823466e38f;     /* false for inf and NaN */
            amax = a > amax ? a : amax;
        }
        if (!finite) return r;
        /* the scale is stored in BF16: round it first so q * s is what a reader gets */
        uint16_t sb = glm_f32_to_bf16(amax > 0 ? amax / 448.0f : 1.0f);
        float s = glm_bf16_to_f32(sb);
        s_bf16[r] = sb;
        uint8_t *o = q + r * cols;
        for (int64_t k = 0; k < cols; k++) o[k] = glm_f32_to_fp8e4m3(x[k] / s);
    }
    return -1;
}

int64_t glm_quant_block_row(const float *w, int64_t rows, int64_t cols, uint8_t *q, float *s) {
    int64_t bc = (cols + GLM_BLOCK - 1) / GLM_BLOCK;
    for (int64_t j = 0; j < bc; j++) s[j] = 0;
    for (int64_t r = 0; r < rows; r++) {
        const float *x = w + r * cols;
        int finite = 1;
        for (int64_t j = 0; j < bc; j++) {
            int64_t k1 = (j + 1) * GLM_BLOCK < cols ? (j + 1) * GLM_BLOCK : cols;
            float amax = s[j];
            for (int64_t k = j * GLM_BLOCK; k < k1; k++) {
                float a = fabsf(x[k]);
                finite &= a <= 3.402823466e38f;
                amax = a > amax ? a : amax;
            }
            s[j] = amax;
        }
        if (!finite) return r;
    }
    for (int64_t j = 0; j < bc; j++) s[j] = s[j] > 0 ? s[j] / 448.0f : 1.0f;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < bc; j++) {
            int64_t k1 = (j + 1) * GLM_BLOCK < cols ? (j + 1) * GLM_BLOCK : cols;
            float sj = s[j];
            const float *x = w + r * cols;
            uint8_t *o = q + r * cols;
            for (int64_t k = j * GLM_BLOCK; k < k1; k++) o[k] = glm_f32_to_fp8e4m3(x[k] / sj);
        }
    return -1;
}

int glm_convert_is_quantized(const char *name) {
    static const char *parts[] = { "q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
                                   "gate_proj.weight", "up_proj.weight", "down_proj.weight", "eh_proj.weight" };
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        size_t m = strlen(parts[i]);
        if (n > m && strcmp(name + n - m, parts[i]) == 0 && name[n - m - 1] == '.') return 1;
    }
    return 0;
}

/* ---- the plan ---- */

typedef struct {
    const glm_st_tensor *src;
    int quant;                   /* 1: written as F8_E4M3 plus a scale tensor */
    int shard;
    int64_t rows, cols;          /* quantised: the matrix [rows, cols] */
    uint64_t off, nbytes;        /* in the shard's data section */
    uint64_t scale_off, scale_nbytes;
} out_tensor;

typedef struct {
    size_t tensor;
    int64_t a, b;                /* quantised: rows [a, b); copied: bytes [a, b) */
} work_unit;

typedef struct {
    char path[4096];
    int fd;
    uint64_t data_start;         /* 8 + header length */
} out_shard;

typedef struct {
    glm_weight_format fmt;
    glm_st_set *st;
    out_tensor *t;
    size_t n_t;
    out_shard *sh;
    int n_sh;
    work_unit *u;
    size_t n_u;
    atomic_size_t next;          /* the next unit to take */
    atomic_uint_least64_t done;  /* input bytes converted */
    atomic_int stop, running;
    uintptr_t page;              /* the memory page size */
    pthread_mutex_t mu;
    pthread_cond_t finished;     /* signalled when the last worker ends */
    int rc;                      /* the first failure, with its message in err */
    char err[1024];
} job;

/* Orders tensors by file, then by offset (the order to stream the input in). */
static int cmp_src(const void *pa, const void *pb) {
    const glm_st_tensor *a = *(const glm_st_tensor *const *)pa, *b = *(const glm_st_tensor *const *)pb;
    if (a->file != b->file) return a->file < b->file ? -1 : 1;
    return a->begin < b->begin ? -1 : a->begin > b->begin;
}

/* Rows of a quantised tensor in one work unit: about UNIT_BYTES of input, whole
 * 128-row block rows for the block format. */
static int64_t unit_rows(const job *j, const out_tensor *o) {
    uint64_t per = (uint64_t)o->cols * glm_dtype_size(o->src->dtype);
    int64_t step = per ? (int64_t)(UNIT_BYTES / per) : 1;
    if (step < 1) step = 1;
    if (j->fmt == GLM_FMT_FP8_BLOCK) step = (step + GLM_BLOCK - 1) / GLM_BLOCK * GLM_BLOCK;
    return step;
}

/* Fills j->t (shards and offsets) and j->u (work units); returns a status. */
static int plan(job *j, uint64_t shard_bytes) {
    size_t n = glm_st_count(j->st);
    const glm_st_tensor **order = malloc((n ? n : 1) * sizeof *order);
    j->t = calloc(n ? n : 1, sizeof *j->t);
    if (!order || !j->t) { free(order); return glm_err(GLM_ERR_OOM, "out of memory"); }
    for (size_t i = 0; i < n; i++) order[i] = glm_st_at(j->st, i);
    qsort(order, n, sizeof *order, cmp_src);
    uint64_t used = 0;
    size_t n_units = 0;
    int shard = 0;
    for (size_t i = 0; i < n; i++) {
        const glm_st_tensor *s = order[i];
        out_tensor *o = &j->t[i];
        if (strlen(s->name) > 900) { free(order); return glm_err(GLM_ERR_FORMAT, "%s: a tensor name of %zu bytes is too long",
                                                                 glm_st_file_path(j->st, s->file), strlen(s->name)); }
        if (s->dtype == GLM_DT_F8E4M3) {
            free(order);
            return glm_err(GLM_ERR_UNSUPPORTED, "%s: tensor '%s' is already F8_E4M3; give a BF16 checkpoint",
                           glm_st_file_path(j->st, s->file), s->name);
        }
        o->src = s;
        uint64_t in_bytes = s->end - s->begin;
        o->quant = s->n_dims == 2 && glm_convert_is_quantized(s->name) &&
                   (s->dtype == GLM_DT_BF16 || s->dtype == GLM_DT_F16 || s->dtype == GLM_DT_F32);
        if (o->quant) {
            o->rows = s->shape[0];
            o->cols = s->shape[1];
            o->nbytes = (uint64_t)o->rows * (uint64_t)o->cols;
            int64_t br = (o->rows + GLM_BLOCK - 1) / GLM_BLOCK, bc = (o->cols + GLM_BLOCK - 1) / GLM_BLOCK;
            o->scale_nbytes = j->fmt == GLM_FMT_FP8_CHANNEL ? (uint64_t)o->rows * 2 : (uint64_t)(br * bc) * 4;
            int64_t step = unit_rows(j, o);
            n_units += (size_t)((o->rows + step - 1) / step);
        } else {
            o->nbytes = in_bytes;
            n_units += (size_t)((in_bytes + UNIT_BYTES - 1) / UNIT_BYTES);
        }
        uint64_t need = o->nbytes + o->scale_nbytes;
        if (used > 0 && used + need > shard_bytes) { shard++; used = 0; }
        o->shard = shard;
        o->off = used;
        o->scale_off = used + o->nbytes;
        used += need;
    }
    free(order);
    j->n_t = n;
    j->n_sh = shard + 1;
    j->u = malloc((n_units ? n_units : 1) * sizeof *j->u);
    if (!j->u) return glm_err(GLM_ERR_OOM, "out of memory");
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const out_tensor *o = &j->t[i];
        if (o->quant) {
            int64_t step = unit_rows(j, o);
            for (int64_t r = 0; r < o->rows; r += step)
                j->u[k++] = (work_unit){ i, r, r + step < o->rows ? r + step : o->rows };
        } else {
            for (uint64_t b = 0; b < o->nbytes; b += UNIT_BYTES)
                j->u[k++] = (work_unit){ i, (int64_t)b, (int64_t)(b + UNIT_BYTES < o->nbytes ? b + UNIT_BYTES : o->nbytes) };
        }
    }
    j->n_u = k;
    return GLM_OK;
}

/* ---- writing ---- */

/* Writes all n bytes at offset off of fd; returns a status naming path. */
static int pwrite_all(int fd, const void *buf, size_t n, uint64_t off, const char *path) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, (off_t)off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return glm_err(GLM_ERR_IO, "%s: write failed at byte %llu: %s", path, (unsigned long long)off,
                                   w < 0 ? strerror(errno) : "no progress");
        p += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return GLM_OK;
}

/* The name of tensor o's scale ("<name>_scale" or "<name>_scale_inv") into buf. */
static void scale_name(char *buf, size_t cap, const job *j, const out_tensor *o) {
    snprintf(buf, cap, "%s%s", o->src->name, j->fmt == GLM_FMT_FP8_CHANNEL ? "_scale" : "_scale_inv");
}

/* Creates shard k (exclusively: never an existing file) and writes its header; returns a status. */
static int open_shard(job *j, int k, const char *dir) {
    out_shard *sh = &j->sh[k];
    char name[64];
    snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", k + 1, j->n_sh);
    int rc = glm_path_join(sh->path, sizeof sh->path, dir, name);
    if (rc) return rc;
    glm_st_header h;
    rc = glm_st_header_begin(&h);
    char sname[1024];
    for (size_t i = 0; i < j->n_t && !rc; i++) {
        const out_tensor *o = &j->t[i];
        if (o->shard != k) continue;
        if (!o->quant) {
            rc = glm_st_header_add(&h, o->src->name, o->src->dtype, o->src->n_dims, o->src->shape, o->off, o->nbytes);
            continue;
        }
        int64_t shape[2] = { o->rows, o->cols };
        rc = glm_st_header_add(&h, o->src->name, GLM_DT_F8E4M3, 2, shape, o->off, o->nbytes);
        scale_name(sname, sizeof sname, j, o);
        int64_t ss[2] = { o->rows, 1 };
        if (j->fmt == GLM_FMT_FP8_BLOCK) { ss[0] = (o->rows + GLM_BLOCK - 1) / GLM_BLOCK; ss[1] = (o->cols + GLM_BLOCK - 1) / GLM_BLOCK; }
        if (!rc) rc = glm_st_header_add(&h, sname, j->fmt == GLM_FMT_FP8_CHANNEL ? GLM_DT_BF16 : GLM_DT_F32, 2, ss,
                                        o->scale_off, o->scale_nbytes);
    }
    if (!rc) rc = glm_st_header_end(&h);
    if (rc) { glm_st_header_free(&h); return rc; }
    sh->fd = open(sh->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (sh->fd < 0) { glm_st_header_free(&h); return glm_err(GLM_ERR_IO, "%s: %s", sh->path, strerror(errno)); }
    rc = pwrite_all(sh->fd, h.buf, h.len, 0, sh->path);
    sh->data_start = h.len;
    glm_st_header_free(&h);
    return rc;
}

/* ---- the workers ---- */

typedef struct {
    float *w;
    uint8_t *q;
    void *s;
    size_t w_cap, q_cap, s_cap;
} bufs;

/* Makes *p hold at least n bytes; returns 0 or -1. */
static int grow(void **p, size_t *cap, size_t n) {
    if (*cap >= n) return 0;
    void *np = realloc(*p, n);
    if (!np) return -1;
    *p = np;
    *cap = n;
    return 0;
}

/* Reads rows [r0, r0 + nr) of a [rows, cols] BF16/F16/F32 tensor as float into w. */
static void rows_f32(const glm_st_tensor *s, int64_t cols, int64_t r0, int64_t nr, float *w) {
    size_t n = (size_t)(nr * cols), first = (size_t)(r0 * cols);
    if (s->dtype == GLM_DT_BF16) {
        const uint16_t *x = (const uint16_t *)s->data + first;
        for (size_t i = 0; i < n; i++) {
            uint32_t u = (uint32_t)x[i] << 16;
            memcpy(&w[i], &u, 4);
        }
    } else if (s->dtype == GLM_DT_F32) {
        memcpy(w, (const float *)s->data + first, n * 4);
    } else {
        const uint16_t *x = (const uint16_t *)s->data + first;
        for (size_t i = 0; i < n; i++) w[i] = glm_f16_to_f32(x[i]);
    }
}

/* Lets the kernel drop the input pages wholly inside [p, p + n) (read once, not needed
 * again), so the process never holds the whole mapped model. */
static void release_input(const job *j, const void *p, size_t n) {
    uintptr_t page = j->page;
    uintptr_t a = ((uintptr_t)p + (uintptr_t)page - 1) & ~((uintptr_t)page - 1), e = ((uintptr_t)p + n) & ~((uintptr_t)page - 1);
    if (e > a) madvise((void *)a, e - a, MADV_DONTNEED);
}

/* Converts (or copies) one work unit and writes it in place; returns a status. */
static int do_unit(job *j, const work_unit *u, bufs *b) {
    const out_tensor *o = &j->t[u->tensor];
    const out_shard *sh = &j->sh[o->shard];
    uint64_t base = sh->data_start;
    if (!o->quant) {
        int rc = pwrite_all(sh->fd, (const char *)o->src->data + u->a, (size_t)(u->b - u->a), base + o->off + (uint64_t)u->a, sh->path);
        release_input(j, (const char *)o->src->data + u->a, (size_t)(u->b - u->a));
        atomic_fetch_add(&j->done, (uint64_t)(u->b - u->a));
        return rc;
    }
    int64_t nr = u->b - u->a, cols = o->cols, bc = (cols + GLM_BLOCK - 1) / GLM_BLOCK;
    size_t n = (size_t)(nr * cols);
    if (grow((void **)&b->w, &b->w_cap, n * sizeof(float)) || grow((void **)&b->q, &b->q_cap, n) ||
        grow(&b->s, &b->s_cap, (size_t)(nr > bc ? nr : bc) * 4))
        return glm_err(GLM_ERR_OOM, "out of memory converting '%s'", o->src->name);
    rows_f32(o->src, cols, u->a, nr, b->w);
    size_t esz = glm_dtype_size(o->src->dtype);
    release_input(j, (const char *)o->src->data + (size_t)u->a * (size_t)cols * esz, n * esz);
    int rc = GLM_OK;
    if (j->fmt == GLM_FMT_FP8_CHANNEL) {
        int64_t bad = glm_quant_channel(b->w, nr, cols, b->q, b->s);
        if (bad >= 0) goto nonfinite_at;
        rc = pwrite_all(sh->fd, b->s, (size_t)nr * 2, base + o->scale_off + (uint64_t)u->a * 2, sh->path);
    } else {
        for (int64_t r = 0; r < nr && !rc; r += GLM_BLOCK) {
            int64_t m = nr - r < GLM_BLOCK ? nr - r : GLM_BLOCK;
            int64_t bad = glm_quant_block_row(b->w + r * cols, m, cols, b->q + r * cols, b->s);
            if (bad >= 0) goto nonfinite_at;
            uint64_t row_block = (uint64_t)((u->a + r) / GLM_BLOCK);
            rc = pwrite_all(sh->fd, b->s, (size_t)bc * 4, base + o->scale_off + row_block * (uint64_t)bc * 4, sh->path);
        }
    }
    if (!rc) rc = pwrite_all(sh->fd, b->q, n, base + o->off + (uint64_t)u->a * (uint64_t)cols, sh->path);
    atomic_fetch_add(&j->done, (uint64_t)n * glm_dtype_size(o->src->dtype));
    return rc;
nonfinite_at:
    /* find the row again for the message (the quantiser stops at the first bad row) */
    for (int64_t r = 0; r < (int64_t)(n / (size_t)cols); r++)
        for (int64_t k = 0; k < cols; k++)
            if (!isfinite(b->w[r * cols + k]))
                return glm_err(GLM_ERR_FORMAT, "%s: tensor '%s' [%lld, %lld] holds %s; FP8 cannot store it",
                               glm_st_file_path(j->st, o->src->file), o->src->name, (long long)(u->a + r), (long long)k,
                               isnan(b->w[r * cols + k]) ? "NaN" : "an infinity");
    return glm_err(GLM_ERR_FORMAT, "%s: tensor '%s' holds a non-finite value", glm_st_file_path(j->st, o->src->file), o->src->name);
}

/* Worker thread: takes units in order until none is left, one fails, or the job stops. */
static void *worker(void *arg) {
    job *j = arg;
    bufs b = { 0 };
    while (!atomic_load(&j->stop)) {
        size_t i = atomic_fetch_add(&j->next, 1);
        if (i >= j->n_u) break;
        int rc = do_unit(j, &j->u[i], &b);
        if (rc) {
            pthread_mutex_lock(&j->mu);
            if (!j->rc) { j->rc = rc; snprintf(j->err, sizeof j->err, "%s", glm_last_error()); }
            pthread_mutex_unlock(&j->mu);
            atomic_store(&j->stop, 1);
        }
    }
    free(b.w);
    free(b.q);
    free(b.s);
    pthread_mutex_lock(&j->mu);
    if (atomic_fetch_sub(&j->running, 1) == 1) pthread_cond_signal(&j->finished);
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

/* Runs the units on n threads, calling progress every 100 ms from this thread; returns a status. */
static int run_pool(job *j, int n, uint64_t total, glm_progress_fn progress, void *user) {
    pthread_t *th = calloc((size_t)n, sizeof *th);
    if (!th) return glm_err(GLM_ERR_OOM, "out of memory");
    int started = 0, cancelled = 0;
    atomic_store(&j->running, n);
    for (; started < n; started++)
        if (pthread_create(&th[started], NULL, worker, j) != 0) break;
    if (started < n) {
        pthread_mutex_lock(&j->mu);
        atomic_fetch_sub(&j->running, n - started);
        pthread_mutex_unlock(&j->mu);
    }
    if (started == 0) { free(th); return glm_err(GLM_ERR_OOM, "cannot start a thread"); }
    for (;;) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000) { ts.tv_sec++; ts.tv_nsec -= 1000000000; }
        pthread_mutex_lock(&j->mu);
        if (atomic_load(&j->running) > 0) pthread_cond_timedwait(&j->finished, &j->mu, &ts);
        int left = atomic_load(&j->running);
        pthread_mutex_unlock(&j->mu);
        if (left == 0) break;
        if (progress && !cancelled && progress(atomic_load(&j->done), total, user)) {
            cancelled = 1;
            atomic_store(&j->stop, 1);
        }
    }
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    free(th);
    if (j->rc) return glm_err(j->rc, "%s", j->err);
    if (cancelled) return glm_err(GLM_ERR_ARG, "cancelled");
    if (progress && progress(total, total, user)) return glm_err(GLM_ERR_ARG, "cancelled");
    return GLM_OK;
}

/* ---- the small files ---- */

/* Writes n bytes to a new file path (never an existing one); returns a status. */
static int write_new_file(const char *path, const void *data, size_t n) {
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return glm_err(GLM_ERR_IO, "%s: %s", path, strerror(errno));
    int rc = pwrite_all(fd, data, n, 0, path);
    if (!rc && fsync(fd) != 0) rc = glm_err(GLM_ERR_IO, "%s: fsync: %s", path, strerror(errno));
    if (close(fd) != 0 && !rc) rc = glm_err(GLM_ERR_IO, "%s: %s", path, strerror(errno));
    return rc;
}

/* Writes config.json: the input's text with a quantization_config added before its last brace. */
static int write_config(const char *cfg, const char *out_dir, glm_weight_format fmt) {
    static const char channel[] =
        ",\n  \"quantization_config\": {\"quant_method\": \"compressed-tensors\", \"format\": \"float-quantized\", "
        "\"config_groups\": {\"group_0\": {\"targets\": [\"Linear\"], \"weights\": {\"num_bits\": 8, \"type\": \"float\", "
        "\"strategy\": \"channel\", \"symmetric\": true, \"dynamic\": false}, \"input_activations\": {\"num_bits\": 8, "
        "\"type\": \"float\", \"strategy\": \"token\", \"symmetric\": true, \"dynamic\": true}}}, "
        "\"ignore\": [\"lm_head\", \"re:.*mlp.gate$\"]}\n}\n";
    static const char block[] =
        ",\n  \"quantization_config\": {\"quant_method\": \"fp8\", \"fmt\": \"e4m3\", \"activation_scheme\": \"dynamic\", "
        "\"weight_block_size\": [128, 128]}\n}\n";
    const char *add = fmt == GLM_FMT_FP8_CHANNEL ? channel : block;
    const char *end = strrchr(cfg, '}');
    if (!end) return glm_err(GLM_ERR_FORMAT, "config.json: not a JSON object");
    size_t head = (size_t)(end - cfg);
    while (head > 0 && (cfg[head - 1] == ' ' || cfg[head - 1] == '\n' || cfg[head - 1] == '\r' || cfg[head - 1] == '\t')) head--;
    size_t n = head + strlen(add);
    char *text = malloc(n + 1);
    if (!text) return glm_err(GLM_ERR_OOM, "out of memory");
    memcpy(text, cfg, head);
    memcpy(text + head, add, strlen(add) + 1);
    char path[4096];
    int rc = glm_path_join(path, sizeof path, out_dir, "config.json");
    if (!rc) rc = write_new_file(path, text, n);
    free(text);
    return rc;
}

/* Writes model.safetensors.index.json (total size and the shard of every tensor). */
static int write_index(const job *j, const char *out_dir) {
    size_t cap = 4096, len = 0;
    char *b = malloc(cap), sname[1024];
    if (!b) return glm_err(GLM_ERR_OOM, "out of memory");
    uint64_t total = 0;
    for (size_t i = 0; i < j->n_t; i++) total += j->t[i].nbytes + j->t[i].scale_nbytes;
    len += (size_t)snprintf(b, cap, "{\n  \"metadata\": {\"total_size\": %llu},\n  \"weight_map\": {", (unsigned long long)total);
    int rc = GLM_OK, first = 1;
    for (size_t i = 0; i < j->n_t && !rc; i++) {
        const out_tensor *o = &j->t[i];
        const char *shard = strrchr(j->sh[o->shard].path, '/') + 1;
        for (int pass = 0; pass < 1 + o->quant && !rc; pass++) {
            const char *nm = o->src->name;
            if (pass) { scale_name(sname, sizeof sname, j, o); nm = sname; }
            if (grow((void **)&b, &cap, len + strlen(nm) * 6 + 128)) { rc = glm_err(GLM_ERR_OOM, "out of memory"); break; }
            len += (size_t)snprintf(b + len, cap - len, "%s\n    ", first ? "" : ",");
            len += json_escape(b + len, cap - len, nm, strlen(nm));
            len += (size_t)snprintf(b + len, cap - len, ": \"%s\"", shard);
            first = 0;
        }
    }
    if (!rc && grow((void **)&b, &cap, len + 16)) rc = glm_err(GLM_ERR_OOM, "out of memory");
    if (!rc) {
        len += (size_t)snprintf(b + len, cap - len, "\n  }\n}\n");
        char path[4096];
        rc = glm_path_join(path, sizeof path, out_dir, "model.safetensors.index.json");
        if (!rc) rc = write_new_file(path, b, len);
    }
    free(b);
    return rc;
}

/* Copies the tokenizer and generation files present in in_dir to out_dir; returns a status. */
static int copy_side_files(const char *in_dir, const char *out_dir) {
    static const char *names[] = { "tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja" };
    char src[4096], dst[4096];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        int rc = glm_path_join(src, sizeof src, in_dir, names[i]);
        if (rc) return rc;
        if (access(src, F_OK) != 0) continue;
        char *data = NULL;
        size_t len = 0;
        rc = glm_read_file(src, &data, &len);
        if (!rc) rc = glm_path_join(dst, sizeof dst, out_dir, names[i]);
        if (!rc) rc = write_new_file(dst, data, len);
        free(data);
        if (rc) return rc;
    }
    return GLM_OK;
}

/* ---- the converter ---- */

int glm_convert_checkpoint(const char *in_dir, const char *out_dir, glm_weight_format fmt, int n_threads,
                           uint64_t shard_bytes, glm_progress_fn progress, void *user) {
    if (fmt != GLM_FMT_FP8_CHANNEL && fmt != GLM_FMT_FP8_BLOCK)
        return glm_err(GLM_ERR_ARG, "conversion writes fp8-channel or fp8-block, not format %d", (int)fmt);
    glm_numbers_init();
    if (n_threads < 1) { long c = sysconf(_SC_NPROCESSORS_ONLN); n_threads = c > 0 ? (int)c : 1; }
    if (shard_bytes == 0) shard_bytes = DEFAULT_SHARD_BYTES;
    job j = { .fmt = fmt, .page = (uintptr_t)sysconf(_SC_PAGESIZE) };
    pthread_mutex_init(&j.mu, NULL);
    pthread_cond_init(&j.finished, NULL);
    char path[4096], *cfg = NULL;
    size_t cfg_len = 0;
    json_doc *doc = NULL;
    glm_hparams hp;
    int rc = glm_path_join(path, sizeof path, in_dir, "config.json");
    if (!rc) rc = glm_read_file(path, &cfg, &cfg_len);
    if (!rc) rc = glm_hparams_parse(cfg, cfg_len, path, &hp);
    if (!rc) {
        char jerr[200];
        doc = json_parse(cfg, cfg_len, jerr, sizeof jerr);
        if (!doc) rc = glm_err(GLM_ERR_FORMAT, "%s: %s", path, jerr);
        else if (json_get(json_root(doc), "quantization_config"))
            rc = glm_err(GLM_ERR_UNSUPPORTED, "%s: the checkpoint is already quantised (it has a quantization_config); "
                         "give a BF16 checkpoint", path);
    }
    if (!rc) rc = glm_st_open_dir(in_dir, &j.st);
    if (!rc) rc = plan(&j, shard_bytes);
    if (!rc) {
        j.sh = calloc((size_t)j.n_sh, sizeof *j.sh);
        if (!j.sh) rc = glm_err(GLM_ERR_OOM, "out of memory");
        for (int k = 0; j.sh && k < j.n_sh; k++) j.sh[k].fd = -1;
    }
    for (int k = 0; !rc && k < j.n_sh; k++) rc = open_shard(&j, k, out_dir);
    if (!rc) {
        uint64_t total = 0;
        for (size_t i = 0; i < j.n_t; i++) total += j.t[i].src->end - j.t[i].src->begin;
        rc = run_pool(&j, n_threads, total, progress, user);
    }
    for (int k = 0; j.sh && k < j.n_sh; k++) {
        if (j.sh[k].fd < 0) continue;
        if (!rc && fsync(j.sh[k].fd) != 0) rc = glm_err(GLM_ERR_IO, "%s: fsync: %s", j.sh[k].path, strerror(errno));
        if (close(j.sh[k].fd) != 0 && !rc) rc = glm_err(GLM_ERR_IO, "%s: %s", j.sh[k].path, strerror(errno));
    }
    if (!rc) rc = write_index(&j, out_dir);
    if (!rc) rc = write_config(cfg, out_dir, fmt);
    if (!rc) rc = copy_side_files(in_dir, out_dir);
    json_free(doc);
    free(cfg);
    free(j.t);
    free(j.u);
    free(j.sh);
    glm_st_close(j.st);
    pthread_mutex_destroy(&j.mu);
    pthread_cond_destroy(&j.finished);
    return rc;
}
