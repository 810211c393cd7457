/* backend-cuda.c - the CUDA backend: the whole model on one GPU.
 *
 * load() uploads every weight once into one device arena: FP8 weights stay FP8 with
 * float32 scales (per channel, or the 128x128 grid padded for cuBLASLt), BF16 stays
 * BF16, vectors become float32; a synthetic model without host data gets random
 * weights generated on the device. The gate and up halves of each SwiGLU (dense MLP,
 * shared expert, every routed expert) sit next to each other so one product can
 * cover both, and a layer's experts sit at a fixed stride so one launch reaches any
 * of them. The KV cache is paged in device memory (BF16, or FP8 E4M3 with a scale per
 * token and head).
 *
 * Decode passes never come back to the host until logits(): up to gemv_max tokens
 * the weights stream through the GEMV kernels (q/k/v in one launch); MoE tokens are
 * grouped by expert on the device and each touched expert is read once, by the GEMV
 * for a few tokens or the FP8 tensor-core kernel (moe-mma.cu) above mma_min. Larger
 * dense products use cuBLASLt FP8 with dynamic per-token (or 1x128) activation
 * scales; prefill MoE (above graph_max tokens) runs every touched expert in one launch
 * per half on the grouped wgmma kernel (moe-wgmma.cu; its tile list is built on the
 * device, so a prefill pass has no host round trip either), or, where that kernel does
 * not apply, reads the group offsets back and runs one cuBLASLt product per touched
 * expert. Passes of up to graph_max
 * tokens are captured into a CUDA graph on first sight of their shape and replayed
 * afterwards: begin() copies the plan into fixed device buffers, so a replay sees the
 * new plan. GLM_CUDA_* environment variables (read at creation) tune the thresholds. */
#include "backend.h"
#include "../ggml-free-kernels/kernels.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CU_LT_WS (32u << 20)     /* cuBLASLt workspace */
#define CU_MAX_SPLIT 64          /* attention context splits */
#define CU_MAX_GRAPHS 256
#define CU_MAX_AUX 8             /* side streams for the prefill experts */
#define CU_AUX_WS (8u << 20)     /* cuBLASLt workspace of each side stream */
#define CU_ALIGN 256

enum { MODE_EAGER, MODE_CAPTURE, MODE_REPLAY };

typedef struct {
    int T, n_out, n_seq_slots, max_pages;
    int hidden;                  /* the pass reads its hidden states (a verify step) */
    uint64_t hash;
    cudaGraphExec_t exec;
    float *host_dst;             /* the page-locked logits rows the graph copies into, or NULL */
} cu_graph;

/* The routed experts of one MoE layer, each a view at expert 0 with a stride. */
typedef struct {
    glm_cu_mat gate, up, down;   /* gate/up: [F, D], down: [D, F] */
    glm_cu_mat gate_up;          /* [2F, D] over both halves (prefill paths) */
    int fused_ok;                /* gate_up is a valid single weight for cuBLASLt */
    int wgmma_ok;                /* ... and for the grouped wgmma kernel */
    int shared;                  /* expert n_expert is the shared expert (same shapes; decode groups take it) */
    int lo, hi;                  /* the experts held: [0, n_expert), or a rank's range under expert parallelism */
} cu_moe;

typedef struct {
    int gpu, n_sm;
    cudaStream_t st;
    glm_cu_lt *lt;
    void *lt_ws;
    void *lt_y;                  /* BF16 outputs of cuBLASLt before widening */
    /* prefill experts (channel scales): one cuBLASLt product per expert, spread over
     * side streams so that the small products fill the GPU together */
    int n_aux;                   /* GLM_CUDA_MOE_STREAMS (default 4, 0 = main stream only) */
    cudaStream_t aux[CU_MAX_AUX];
    glm_cu_lt *aux_lt[CU_MAX_AUX];
    void *aux_ws[CU_MAX_AUX];
    cudaEvent_t ev_fork, ev_join[CU_MAX_AUX];
    /* logits of many rows in vocabulary slices, each copied to the host on copy_st
     * while the next is computed (GLM_CUDA_LOGIT_SLICES, default 1) */
    int logit_slices;
    cudaStream_t copy_st;
    cudaEvent_t ev_slice, ev_copied;

    /* weights, and the load's progress (params.progress) */
    glm_progress_fn progress;
    void *progress_user;
    uint64_t up_done, up_total;
    uint8_t *arena;
    size_t arena_bytes, arena_used;
    cu_moe *moe;                 /* [n_layer] */
    int synthetic;               /* weights generated on the device */

    /* backend allocations handed to the model code */
    void **allocs;
    int n_allocs, cap_allocs;

    /* KV cache */
    void *kv_mem;
    int n_pages;
    int kv_fp8;
    glm_cu_kv *kv;               /* [n_layer] */

    /* plan: [tokens | pos | seq | out_rows] x max_tokens, the page table, then the
     * prefill attention tiles (n_tiles + 1 starts; eager passes above graph_max only) */
    int max_tokens;
    int32_t *h_plan, *d_plan;    /* pinned host staging, device copy */
    size_t plan_cap;             /* int32 elements */
    int T, n_out, n_seq_slots, max_pages;
    int n_tiles, tile_off;       /* tensor-core prefill attention: tiles, their offset in the plan */

    /* scratch */
    uint8_t *xq;  size_t xq_bytes;
    float *xs;    size_t xs_floats;
    float *gtmp;  size_t gtmp_floats;
    float *rlog;                 /* router logits [max_tokens, n_expert] */
    float *mid, *eo;             /* MoE [max_tokens*k, F], [max_tokens*k, D] */
    int32_t *g_off, *g_off4, *g_active, *g_nact, *g_rows, *g_slot;
    int32_t *g_ids;              /* expert parallel: the routed ids with other ranks' experts -1 */
    int32_t *g_tiles;            /* the grouped wgmma kernel's tile list */
    int32_t *h_off;              /* pinned: off[E+1], off4[E+1] */
    float *att_ws; size_t att_ws_floats;
    float *fnorm;                /* final-norm rows [logit_chunk, D] */
    float *logits_d, *logits_h;  /* [logit_chunk, n_vocab] device, pinned host staging */
    int logit_chunk;
    /* sampling on the device (sample()): output rows of the last logits() pass whole in
     * logits_d (0: none, or already sampled), and the per-call buffers */
    int samp_n;
    glm_cu_sample_row *samp_row_h, *samp_row_d;
    int32_t *samp_hist_h, *samp_hist_d, *samp_ids_d;
    int samp_cap;                /* rows the buffers hold */
    size_t samp_hist_cap;        /* history tokens they hold */
    void *pin;                   /* the page-locked logits buffer given to the context */
    size_t pin_bytes;

    /* graphs */
    int use_graphs, graph_max;
    int mode;
    uint64_t hash;
    cu_graph *cur;               /* graph being replayed */
    cu_graph graphs[CU_MAX_GRAPHS];
    int n_graphs;

    /* thresholds */
    int gemv_max;                /* dense products use the GEMV kernels up to this T */
    int dense_mma_max;           /* FP8 dense products of up to this many tokens (above gemv_max)
                                    split along K on the tensor-core kernel (GLM_CUDA_DENSE_MMA,
                                    default 8; 0 = cuBLASLt) */
    float *part;                 /* the split products' partial sums */
    size_t part_floats;
    int mma_min;                 /* decode MoE uses the FP8 tensor-core kernel above this T */
    int wgmma;                   /* GLM_CUDA_WGMMA: prefill MoE on the grouped wgmma kernel (default 1) */
    int wgmma_tok;               /* GLM_CUDA_WGMMA_TOK: ... with one activation scale a token for
                                    channel-scaled weights (default 1; 0: 1x128 blocks) */
    unsigned gemv_flags;         /* GLM_CU_GEMV_*: GLM_CUDA_GEMV_MMA=0 (FP8 GEMVs of 2+ tokens on the CUDA
                                  * cores), GLM_CUDA_GEMV_BULK=0 (one token on the register loop) */

    /* deferred work: dense GEMVs over one x wait so q, k and v go in one launch; a
     * residual add waits to be fused with the RMSNorm that follows it */
    struct { glm_cu_mat m; const float *bias; float *y; } pl[4];
    int n_pl, pl_T;
    const float *pl_x;
    float *pa_x;
    const float *pa_y;
    size_t pa_n;
    /* biases of products above gemv_max tokens, left for the next op that reads y (the
     * attention adds those of q, k and v in its RoPE pass) */
    struct { float *y; const float *b; int N; } pb[3];
    int n_pb;
    /* xq holds x quantised (xq_T rows of xq_K, block scales or not) for a linear that
     * reads the same x next (q, k and v): NULL when unknown */
    const float *xq_of;
    int xq_T, xq_K, xq_blk;
    int fuse;                    /* GLM_CUDA_FUSE (default 1) */
    int fa;                      /* GLM_CUDA_FA: tensor-core prefill attention (default 1) */

    /* tensor parallel (lib/tp.c): the rank's communicator (be->comm), and the logits
     * gather: this rank's vocabulary rows [logit_chunk, Vmax], every rank's [N, logit_chunk, Vmax] */
    glm_comm *comm;
    float *tp_send, *tp_recv;

    /* a read inside a captured pass (read()): page-locked staging [max_tokens, n_embd] with
     * the MTP layer, and where logits() copies it once the pass has run */
    float *rd_pin;
    size_t rd_cap, rd_n;
    float *rd_host;

    /* profiling (GLM_CUDA_PROFILE=1): an event before each op, graphs off */
    int prof;
    cudaEvent_t *ev;
    int *ev_label;
    int n_ev, cap_ev;
} cu_impl;

/* ---- profile: time per op label, accumulated over passes ---- */
#define PROF_MAX 256
static struct { char name[64]; double ms, bytes; long calls; } prof_tab[PROF_MAX];
static int prof_n;

static int prof_label(const char *name) {
    for (int i = 0; i < prof_n; i++) if (!strcmp(prof_tab[i].name, name)) return i;
    if (prof_n == PROF_MAX) return PROF_MAX - 1;
    snprintf(prof_tab[prof_n].name, sizeof prof_tab[0].name, "%s", name);
    return prof_n++;
}

/* Marks the start of an op labelled name that moves bytes of weights. */
static void prof_mark(cu_impl *c, const char *name, double bytes) {
    if (!c->prof) return;
    if (c->n_ev == c->cap_ev) {
        int cap = c->cap_ev ? 2 * c->cap_ev : 1024;
        cudaEvent_t *ev = realloc(c->ev, (size_t)cap * sizeof *ev);
        if (!ev) return;
        c->ev = ev;
        int *lb = realloc(c->ev_label, (size_t)cap * sizeof *lb);
        if (!lb) return;
        c->ev_label = lb;
        for (int i = c->cap_ev; i < cap; i++) cudaEventCreate(&c->ev[i]);
        c->cap_ev = cap;
    }
    const int l = prof_label(name);
    prof_tab[l].bytes += bytes;
    prof_tab[l].calls++;
    c->ev_label[c->n_ev] = l;
    cudaEventRecord(c->ev[c->n_ev++], c->st);
}

/* After the pass has synchronised: folds the event gaps into the table. */
static void prof_collect(cu_impl *c) {
    if (!c->prof || c->n_ev < 2) { c->n_ev = 0; return; }
    for (int i = 0; i + 1 < c->n_ev; i++) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, c->ev[i], c->ev[i + 1]) == cudaSuccess) prof_tab[c->ev_label[i]].ms += ms;
    }
    cudaGetLastError();
    c->n_ev = 0;
}

static int prof_cmp(const void *a, const void *b) {
    const double x = prof_tab[*(const int *)a].ms, y = prof_tab[*(const int *)b].ms;
    return x < y ? 1 : x > y ? -1 : 0;
}

int glm_cuda_profile_text(char *buf, size_t cap) {
    int idx[PROF_MAX];
    double total = 0;
    for (int i = 0; i < prof_n; i++) { idx[i] = i; total += prof_tab[i].ms; }
    qsort(idx, (size_t)prof_n, sizeof idx[0], prof_cmp);
    size_t o = 0;
    o += (size_t)snprintf(buf + o, o < cap ? cap - o : 0, "%-40s %8s %10s %9s %6s %9s\n", "op", "calls", "total ms", "avg us", "share", "GB/s");
    for (int j = 0; j < prof_n; j++) {
        const int i = idx[j];
        char bw[32] = "";
        if (prof_tab[i].bytes > 0 && prof_tab[i].ms > 0) snprintf(bw, sizeof bw, "%9.0f", prof_tab[i].bytes / (prof_tab[i].ms * 1e-3) / 1e9);
        o += (size_t)snprintf(buf + o, o < cap ? cap - o : 0, "%-40s %8ld %10.3f %9.2f %5.1f%% %9s\n", prof_tab[i].name, prof_tab[i].calls,
                              prof_tab[i].ms, 1e3 * prof_tab[i].ms / (prof_tab[i].calls ? prof_tab[i].calls : 1),
                              total > 0 ? 100 * prof_tab[i].ms / total : 0, bw);
    }
    return (int)o;
}

void glm_cuda_profile_reset(void) { prof_n = 0; memset(prof_tab, 0, sizeof prof_tab); }

static cu_impl *IMPL(glm_backend *be) { return (cu_impl *)be->impl; }

#define CK(call)                                                                           \
    do {                                                                                   \
        cudaError_t e_ = (call);                                                           \
        if (e_ != cudaSuccess)                                                             \
            return glm_err(GLM_ERR_CUDA, "%s:%d: %s failed: %s", __FILE__, __LINE__, #call, \
                           cudaGetErrorString(e_));                                        \
    } while (0)
#define RUN(call) do { int rc_ = (call); if (rc_) return rc_; } while (0)

int glm_cuda_available(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) { cudaGetLastError(); return 0; }
    return n > 0;
}

int glm_cuda_check(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        cudaGetLastError();
        return glm_err(GLM_ERR_CUDA, "no CUDA device: %s", e != cudaSuccess ? cudaGetErrorString(e) : "none found");
    }
    return GLM_OK;
}

int glm_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) { cudaGetLastError(); return 0; }
    return n;
}

int glm_cuda_mem_info(int gpu, uint64_t *free_b, uint64_t *total_b) {
    size_t fr = 0, tot = 0;
    cudaError_t e = cudaSetDevice(gpu);
    if (e == cudaSuccess) e = cudaMemGetInfo(&fr, &tot);
    if (e != cudaSuccess) { cudaGetLastError(); return glm_err(GLM_ERR_CUDA, "GPU %d: %s", gpu, cudaGetErrorString(e)); }
    *free_b = fr;
    *total_b = tot;
    return GLM_OK;
}

static double mib(size_t b) { return (double)b / (1024.0 * 1024.0); }

/* cudaMalloc with a message that gives the numbers when memory runs out. */
static int dev_alloc(void **p, size_t n, const char *what) {
    *p = NULL;
    if (!n) n = 16;
    cudaError_t e = cudaMalloc(p, n);
    if (e == cudaSuccess) return GLM_OK;
    cudaGetLastError();
    size_t fr = 0, tot = 0;
    cudaMemGetInfo(&fr, &tot);
    *p = NULL;
    if (e == cudaErrorMemoryAllocation)
        return glm_err(GLM_ERR_OOM, "not enough GPU memory for %s: needed %.1f MiB, free %.1f MiB of %.1f MiB",
                       what, mib(n), mib(fr), mib(tot));
    return glm_err(GLM_ERR_CUDA, "cudaMalloc(%s, %.1f MiB) failed: %s", what, mib(n), cudaGetErrorString(e));
}

static size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

/* ---- op hashing: a replayed graph must see the same op sequence it captured ---- */
static void hmix(cu_impl *c, uint64_t v) {
    uint64_t h = c->hash ^ (v + 0x9e3779b97f4a7c15ull + (c->hash << 6) + (c->hash >> 2));
    c->hash = h * 0xff51afd7ed558ccdull;
}
static void hptr(cu_impl *c, const void *p) { hmix(c, (uint64_t)(uintptr_t)p); }

/* Every op starts with this: records the op and says whether to enqueue work. */
static int op_skip(cu_impl *c, int op, const void *a, const void *b, const void *d, int n) {
    hmix(c, (uint64_t)op); hptr(c, a); hptr(c, b); hptr(c, d); hmix(c, (uint64_t)n);
    if (op != 3) c->xq_of = NULL;  /* any op but linear may write xq or the activations */
    return c->mode == MODE_REPLAY;
}

/* ---- weights ---- */
static int w_empty(const glm_weight *w) { return !w->name || w->rows * w->cols == 0; }
static int w_dev_dtype(const glm_weight *w) {
    if (w->dtype == GLM_DT_F8E4M3) return GLM_CU_FP8;
    if (w->dtype == GLM_DT_BF16) return GLM_CU_BF16;
    return GLM_CU_F32;  /* F32 stays, F16 is widened */
}
static size_t dt_size(int dt) { return dt == GLM_CU_FP8 ? 1 : dt == GLM_CU_BF16 ? 2 : 4; }
static int w_scale_kind(const glm_weight *w) {
    if (w->dtype != GLM_DT_F8E4M3) return GLM_CU_SCALE_NONE;
    return w->scale_kind == GLM_SCALE_BLOCK ? GLM_CU_SCALE_BLOCK : GLM_CU_SCALE_CHANNEL;
}
static size_t w_data_bytes(const glm_weight *w) { return (size_t)(w->rows * w->cols) * dt_size(w_dev_dtype(w)); }
static size_t w_scale_floats(const glm_weight *w) {
    int sk = w_scale_kind(w);
    if (sk == GLM_CU_SCALE_CHANNEL) return (size_t)w->rows;
    if (sk == GLM_CU_SCALE_BLOCK) return (size_t)((w->rows + 127) / 128) * glm_cu_block_ld(w->cols);
    return 0;
}

/* The kernels' view of an uploaded weight. */
static glm_cu_mat mat_of(const glm_weight *w) {
    glm_cu_mat m;
    memset(&m, 0, sizeof m);
    m.data = w->dev;
    m.scale = (const float *)w->dev_scale;
    m.dtype = w_dev_dtype(w);
    m.scale_kind = w_scale_kind(w);
    m.N = (int)w->rows;
    m.K = (int)w->cols;
    m.s_ld = glm_cu_block_ld(w->cols);
    return m;
}

static void *arena_take(cu_impl *c, size_t n) {
    void *p = c->arena + c->arena_used;
    c->arena_used += align_up(n, CU_ALIGN);
    return p;
}

static float read_scalar(glm_dtype dt, const void *p, size_t i) {
    if (dt == GLM_DT_F32) return ((const float *)p)[i];
    if (dt == GLM_DT_BF16) return glm_bf16_to_f32(((const uint16_t *)p)[i]);
    if (dt == GLM_DT_F16) return glm_f16_to_f32(((const uint16_t *)p)[i]);
    return 0.f;
}

static uint64_t g_seed = 0x5eed;

/* Uploads (or generates) w's data at dst and its float32 scales at sdst.
 * kind: 0 matrix, 1 norm vector (ones), 2 small vector (biases). */
static int upload_one(cu_impl *c, glm_weight *w, void *dst, float *sdst, int kind);
static size_t w_arena_bytes(const glm_weight *w, int kind);

/* Uploads w (upload_one) and reports the bytes done to params.progress; its non-zero
 * answer cancels the load. */
static int upload(cu_impl *c, glm_weight *w, void *dst, float *sdst, int kind) {
    RUN(upload_one(c, w, dst, sdst, kind));
    c->up_done += w_arena_bytes(w, kind);
    if (c->progress && c->progress(c->up_done, c->up_total, c->progress_user))
        return glm_err(GLM_ERR_IO, "loading the weights onto GPU %d: cancelled", c->gpu);
    return GLM_OK;
}

static int upload_one(cu_impl *c, glm_weight *w, void *dst, float *sdst, int kind) {
    const int dt = w_dev_dtype(w), sk = w_scale_kind(w);
    const size_t n = (size_t)(w->rows * w->cols);
    w->dev = dst;
    w->dev_scale = sk ? sdst : NULL;
    if (!w->data) {  /* synthetic: generate on the device */
        const uint64_t seed = ++g_seed;
        if (kind == 1) RUN(glm_cu_fill_uniform(dst, n, 0.9f, 1.1f, seed, c->st));
        else if (kind == 2) RUN(glm_cu_fill_uniform(dst, n, -0.05f, 0.05f, seed, c->st));
        else RUN(glm_cu_fill_random(dst, dt, n, sqrtf(3.f / (float)w->cols), seed, c->st));
        if (sk) {
            const float base = sqrtf(3.f / (float)w->cols) / 448.f;
            RUN(glm_cu_fill_uniform(sdst, w_scale_floats(w), 0.5f * base, 1.5f * base, seed ^ 0xabcdef, c->st));
        }
        return GLM_OK;
    }
    /* a view (a tensor-parallel rank's slice, lib/tp.c): rows x cols at (row0, col0) of the
     * stored tensor, whose rows are ld apart; packed here into rows x cols */
    const int64_t ld = w->ld ? w->ld : w->cols, off = w->row0 * ld + w->col0;
    if (w->dtype == GLM_DT_F16 || (kind && w->dtype != GLM_DT_F32)) {
        float *tmp = malloc(n * sizeof(float));
        if (!tmp) return glm_err(GLM_ERR_OOM, "out of host memory converting %s", w->name);
        for (int64_t r = 0; r < w->rows; r++)
            for (int64_t j = 0; j < w->cols; j++)
                tmp[r * w->cols + j] = read_scalar(w->dtype, w->data, (size_t)(off + r * ld + j));
        cudaError_t e = cudaMemcpy(dst, tmp, n * sizeof(float), cudaMemcpyHostToDevice);
        free(tmp);
        if (e != cudaSuccess) return glm_err(GLM_ERR_CUDA, "uploading %s: %s", w->name, cudaGetErrorString(e));
    } else {
        const size_t es = dt_size(w_dev_dtype(w));
        CK(cudaMemcpy2D(dst, (size_t)w->cols * es, (const uint8_t *)w->data + (size_t)off * es, (size_t)ld * es,
                        (size_t)w->cols * es, (size_t)w->rows, cudaMemcpyHostToDevice));
    }
    if (sk) {
        if (!w->scale) return glm_err(GLM_ERR_FORMAT, "%s: FP8 weight without scales", w->name);
        if (sk == GLM_CU_SCALE_BLOCK && (w->row0 % 128 || w->col0 % 128))
            return glm_err(GLM_ERR_NOT_IMPLEMENTED, "%s: a tensor-parallel slice of a 128x128 block-scaled FP8 weight "
                           "starting at row %lld, column %lld (not a multiple of 128) is not implemented on CUDA: use "
                           "fewer ranks, --moe-split ep, or a per-channel checkpoint (glm-convert)",
                           w->name, (long long)w->row0, (long long)w->col0);
        const size_t nf = w_scale_floats(w);
        float *tmp = calloc(nf, sizeof(float));
        if (!tmp) return glm_err(GLM_ERR_OOM, "out of host memory converting scales of %s", w->name);
        if (sk == GLM_CU_SCALE_CHANNEL) {
            for (int64_t r = 0; r < w->rows; r++) tmp[r] = read_scalar(w->scale_dtype, w->scale, (size_t)(w->row0 + r));
        } else {  /* the view's blocks are whole blocks of the stored grid [ceil(rows/128), ceil(ld/128)] */
            const int64_t rb = (w->rows + 127) / 128, cb = (w->cols + 127) / 128, scb = (ld + 127) / 128;
            const int64_t b0 = w->row0 / 128, c0 = w->col0 / 128;
            const int sld = glm_cu_block_ld(w->cols);
            for (int64_t i = 0; i < rb; i++)
                for (int64_t j = 0; j < cb; j++)
                    tmp[i * sld + j] = read_scalar(w->scale_dtype, w->scale, (size_t)((b0 + i) * scb + c0 + j));
        }
        cudaError_t e = cudaMemcpy(sdst, tmp, nf * sizeof(float), cudaMemcpyHostToDevice);
        free(tmp);
        if (e != cudaSuccess) return glm_err(GLM_ERR_CUDA, "uploading scales of %s: %s", w->name, cudaGetErrorString(e));
    }
    return GLM_OK;
}

/* Bytes a weight takes in the arena (data + scales). */
static size_t w_arena_bytes(const glm_weight *w, int kind) {
    if (w_empty(w)) return 0;
    const size_t n = (size_t)(w->rows * w->cols);
    size_t b = kind ? align_up(n * 4, CU_ALIGN) : align_up(w_data_bytes(w), CU_ALIGN);
    return b + align_up(w_scale_floats(w) * 4, CU_ALIGN);
}

static int up_single(cu_impl *c, glm_weight *w, int kind, int pass, size_t *need) {
    if (w_empty(w)) return GLM_OK;
    if (pass == 0) { *need += w_arena_bytes(w, kind); return GLM_OK; }
    void *d = arena_take(c, kind ? (size_t)(w->rows * w->cols) * 4 : w_data_bytes(w));
    float *s = w_scale_floats(w) ? arena_take(c, w_scale_floats(w) * 4) : NULL;
    return upload(c, w, d, s, kind);
}

/* A SwiGLU pair: gate rows then up rows in one block, scales likewise. */
static int up_pair(cu_impl *c, glm_weight *g, glm_weight *u, int pass, size_t *need) {
    if (w_empty(g) || w_empty(u)) {
        RUN(up_single(c, g, 0, pass, need));
        return up_single(c, u, 0, pass, need);
    }
    const size_t db = w_data_bytes(g), sf = w_scale_floats(g);
    if (pass == 0) { *need += align_up(2 * db, CU_ALIGN) + align_up(2 * sf * 4, CU_ALIGN); return GLM_OK; }
    uint8_t *d = arena_take(c, 2 * db);
    float *s = sf ? arena_take(c, 2 * sf * 4) : NULL;
    RUN(upload(c, g, d, s, 0));
    return upload(c, u, d + db, s ? s + sf : NULL, 0);
}

static int same_layout(const glm_weight *a, const glm_weight *b) {
    return a->dtype == b->dtype && a->rows == b->rows && a->cols == b->cols && a->scale_kind == b->scale_kind;
}

/* Whether the layer's shared expert has the routed experts' shapes and types, so that
 * it can sit after them as expert n_expert. */
static int shared_slot_ok(const glm_layer *L) {
    return L->exp_gate && L->exp_down && !w_empty(&L->sh_gate) && !w_empty(&L->sh_up) && !w_empty(&L->sh_down) &&
           same_layout(&L->sh_gate, &L->exp_gate[0]) && same_layout(&L->sh_up, &L->exp_gate[0]) &&
           same_layout(&L->sh_down, &L->exp_down[0]);
}

/* The routed experts a layer's model holds: all of them, or under expert parallelism
 * (lib/tp.c) the contiguous range [lo, hi) whose weights are not empty. */
static int own_experts(const glm_layer *L, int il, int E, int *lo, int *hi) {
    int a = 0;
    while (a < E && w_empty(&L->exp_gate[a])) a++;
    int b = a;
    while (b < E && !w_empty(&L->exp_gate[b])) b++;
    for (int e = b; e < E; e++)
        if (!w_empty(&L->exp_gate[e]))
            return glm_err(GLM_ERR_UNSUPPORTED, "layer %d: the experts held are not one contiguous range", il);
    *lo = a;
    *hi = b;
    return GLM_OK;
}

/* Whether the layer's shared expert sits in the experts' slot E (up_experts). */
static int shared_in_slot(const glm_layer *L, int il, int E) {
    int lo = 0, hi = 0;
    if (!L->exp_gate || !L->exp_up || !L->exp_down || E <= 0 || own_experts(L, il, E, &lo, &hi)) return 0;
    return lo == 0 && hi == E && shared_slot_ok(L);
}

/* A layer's routed experts: [E][gate|up] and [E][down] at fixed strides, with the shared
 * expert as expert E when it fits (shared_slot_ok): decode groups then take it in the
 * same launches, and its glm_weights point into that slot for the other paths. */
static int up_experts(cu_impl *c, glm_layer *L, int il, int E, int pass, size_t *need) {
    if (!L->exp_gate || !L->exp_up || !L->exp_down || E <= 0) return GLM_OK;
    int lo, hi;
    RUN(own_experts(L, il, E, &lo, &hi));
    if (lo == hi) {  /* a rank with no rows of any expert (lib/tp.c: fewer rows than ranks) */
        if (pass) c->moe[il].lo = c->moe[il].hi = 0;
        return GLM_OK;
    }
    glm_weight *g0 = &L->exp_gate[lo], *d0 = &L->exp_down[lo];
    for (int e = lo; e < hi; e++)
        if (!same_layout(&L->exp_gate[e], g0) || !same_layout(&L->exp_up[e], g0) || !same_layout(&L->exp_down[e], d0))
            return glm_err(GLM_ERR_UNSUPPORTED, "layer %d: experts differ in type or shape", il);
    /* experts [lo, hi) are stored from slot 0; the shared expert takes slot E only when
     * the rank holds every expert */
    const int own = hi - lo, sh = own == E && shared_slot_ok(L), E1 = own + sh;
    const size_t gb = align_up(w_data_bytes(g0), 16), gs = w_scale_floats(g0);
    const size_t db = align_up(w_data_bytes(d0), 16), ds = w_scale_floats(d0);
    const size_t gu_stride = 2 * gb, gus_stride = 2 * gs;
    if (pass == 0) {
        *need += align_up(E1 * gu_stride, CU_ALIGN) + align_up(E1 * gus_stride * 4, CU_ALIGN) +
                 align_up(E1 * db, CU_ALIGN) + align_up(E1 * ds * 4, CU_ALIGN);
        return GLM_OK;
    }
    uint8_t *gu = arena_take(c, E1 * gu_stride);
    float *gus = gus_stride ? arena_take(c, E1 * gus_stride * 4) : NULL;
    uint8_t *dn = arena_take(c, E1 * db);
    float *dns = ds ? arena_take(c, E1 * ds * 4) : NULL;
    for (int e = 0; e < E1; e++) {
        glm_weight *wg = e < own ? &L->exp_gate[lo + e] : &L->sh_gate, *wu = e < own ? &L->exp_up[lo + e] : &L->sh_up;
        glm_weight *wd = e < own ? &L->exp_down[lo + e] : &L->sh_down;
        RUN(upload(c, wg, gu + e * gu_stride, gus ? gus + e * gus_stride : NULL, 0));
        RUN(upload(c, wu, gu + e * gu_stride + gb, gus ? gus + e * gus_stride + gs : NULL, 0));
        RUN(upload(c, wd, dn + e * db, dns ? dns + e * ds : NULL, 0));
    }
    cu_moe *m = &c->moe[il];
    m->shared = sh;
    m->lo = lo;
    m->hi = hi;
    m->gate = mat_of(g0);
    m->up = mat_of(&L->exp_up[lo]);
    m->down = mat_of(d0);
    /* the kernels address expert e at data + e * stride: the views start lo slots before
     * the first stored expert (experts outside [lo, hi) are never addressed) */
    m->gate.data = (const uint8_t *)m->gate.data - (ptrdiff_t)lo * (ptrdiff_t)gu_stride;
    m->up.data = (const uint8_t *)m->up.data - (ptrdiff_t)lo * (ptrdiff_t)gu_stride;
    m->down.data = (const uint8_t *)m->down.data - (ptrdiff_t)lo * (ptrdiff_t)db;
    if (m->gate.scale) {
        m->gate.scale -= (ptrdiff_t)lo * (ptrdiff_t)gus_stride;
        m->up.scale -= (ptrdiff_t)lo * (ptrdiff_t)gus_stride;
    }
    if (m->down.scale) m->down.scale -= (ptrdiff_t)lo * (ptrdiff_t)ds;
    m->gate.stride = m->up.stride = (long long)gu_stride;
    m->gate.s_stride = m->up.s_stride = (long long)gus_stride;
    m->down.stride = (long long)db;
    m->down.s_stride = (long long)ds;
    m->gate_up = m->gate;
    m->gate_up.N = 2 * m->gate.N;
    /* one product over both halves needs contiguous rows and, for block scales, 128-row halves */
    m->fused_ok = gb == w_data_bytes(g0) &&
                  (m->gate.scale_kind != GLM_CU_SCALE_BLOCK || m->gate.N % 128 == 0) &&
                  glm_cu_lt_shape_ok(&m->gate_up) && glm_cu_lt_shape_ok(&m->down);
    m->wgmma_ok = gb == w_data_bytes(g0) && m->gate.N % 128 == 0 && glm_cu_wgmma_ok(&m->gate_up) &&
                  glm_cu_wgmma_ok(&m->down);
    return GLM_OK;
}

/* Walks every weight: pass 0 sums the arena size, pass 1 uploads. */
static int walk_weights(cu_impl *c, glm_model *m, int mtp, int pass, size_t *need) {
    const glm_hparams *hp = &m->hp;
    RUN(up_single(c, &m->tok_embd, 0, pass, need));
    RUN(up_single(c, &m->out_norm, 1, pass, need));
    RUN(up_single(c, &m->lm_head, 0, pass, need));
    if (mtp) {  /* the MTP layer's own weights; its decoder block is layer n_layer below */
        RUN(up_single(c, &m->mtp_enorm, 1, pass, need));
        RUN(up_single(c, &m->mtp_hnorm, 1, pass, need));
        RUN(up_single(c, &m->mtp_eh_proj, 0, pass, need));
        RUN(up_single(c, &m->mtp_head_norm, 1, pass, need));
        RUN(up_single(c, &m->mtp_embd, 0, pass, need));
        RUN(up_single(c, &m->mtp_head, 0, pass, need));
    }
    for (int il = 0; il < hp->n_layer + mtp; il++) {
        glm_layer *L = &m->layers[il];
        RUN(up_single(c, &L->attn_norm, 1, pass, need));
        RUN(up_single(c, &L->ffn_norm, 1, pass, need));
        RUN(up_single(c, &L->wq, 0, pass, need));
        RUN(up_single(c, &L->wk, 0, pass, need));
        RUN(up_single(c, &L->wv, 0, pass, need));
        RUN(up_single(c, &L->wo, 0, pass, need));
        RUN(up_single(c, &L->bq, 2, pass, need));
        RUN(up_single(c, &L->bk, 2, pass, need));
        RUN(up_single(c, &L->bv, 2, pass, need));
        RUN(up_single(c, &L->q_norm, 1, pass, need));
        RUN(up_single(c, &L->k_norm, 1, pass, need));
        if (il < hp->n_dense_layer) {
            RUN(up_pair(c, &L->ffn_gate, &L->ffn_up, pass, need));
            RUN(up_single(c, &L->ffn_down, 0, pass, need));
        } else {
            RUN(up_single(c, &L->router, 0, pass, need));
            RUN(up_single(c, &L->router_bias, 2, pass, need));
            RUN(up_experts(c, L, il, hp->n_expert, pass, need));
            if (!shared_in_slot(L, il, hp->n_expert)) {
                RUN(up_pair(c, &L->sh_gate, &L->sh_up, pass, need));
                RUN(up_single(c, &L->sh_down, 0, pass, need));
            }
        }
    }
    return GLM_OK;
}

static void clear_dev(glm_weight *w) { if (w) { w->dev = NULL; w->dev_scale = NULL; } }

static void clear_model_dev(glm_model *m) {
    clear_dev(&m->tok_embd); clear_dev(&m->out_norm); clear_dev(&m->lm_head);
    clear_dev(&m->mtp_enorm); clear_dev(&m->mtp_hnorm); clear_dev(&m->mtp_eh_proj);
    clear_dev(&m->mtp_head_norm); clear_dev(&m->mtp_embd); clear_dev(&m->mtp_head);
    for (int il = 0; il < m->hp.n_layer + m->has_mtp; il++) {
        glm_layer *L = &m->layers[il];
        glm_weight *ws[] = {&L->attn_norm, &L->ffn_norm, &L->wq, &L->wk, &L->wv, &L->wo, &L->bq, &L->bk, &L->bv,
                            &L->q_norm, &L->k_norm, &L->ffn_gate, &L->ffn_up, &L->ffn_down, &L->router,
                            &L->router_bias, &L->sh_gate, &L->sh_up, &L->sh_down};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) clear_dev(ws[i]);
        for (int e = 0; e < m->hp.n_expert; e++) {
            if (L->exp_gate) clear_dev(&L->exp_gate[e]);
            if (L->exp_up) clear_dev(&L->exp_up[e]);
            if (L->exp_down) clear_dev(&L->exp_down[e]);
        }
    }
}

uint64_t glm_backend_cuda_weight_bytes(glm_model *m) {
    size_t need = 0;
    if (walk_weights(NULL, m, 0, 0, &need)) return 0;  /* pass 0 only sums: no backend state */
    return need;
}

static int cu_load(glm_backend *be, glm_model *m) {
    cu_impl *c = IMPL(be);
    CK(cudaSetDevice(c->gpu));
    if (m->tok_embd.dev) return glm_err(GLM_ERR_ARG, "model is already loaded on a CUDA backend");
    size_t need = 0;
    const int mtp = be->params.mtp && m->has_mtp;
    RUN(walk_weights(c, m, mtp, 0, &need));
    size_t fr = 0, tot = 0;
    CK(cudaMemGetInfo(&fr, &tot));
    if (need + (256u << 20) > fr)
        return glm_err(GLM_ERR_OOM, "model needs %.2f GiB of GPU memory for its weights, %.2f GiB free of %.2f GiB on GPU %d",
                       need / 1073741824.0, fr / 1073741824.0, tot / 1073741824.0, c->gpu);
    RUN(dev_alloc((void **)&c->arena, need, "the weights"));
    c->arena_bytes = need;
    c->arena_used = 0;
    c->moe = calloc((size_t)m->hp.n_layer + 1, sizeof(cu_moe));
    if (!c->moe) return glm_err(GLM_ERR_OOM, "out of memory");
    c->synthetic = m->tok_embd.data == NULL;
    c->progress = be->params.progress;
    c->progress_user = be->params.progress_user;
    c->up_done = 0;
    c->up_total = need;
    int rc = walk_weights(c, m, mtp, 1, &need);
    if (rc) { clear_model_dev(m); return rc; }
    CK(cudaStreamSynchronize(c->st));
    return GLM_OK;
}

/* ---- KV cache ---- */
/* Layers with a KV cache: the decoder layers, and the MTP layer when the context drafts. */
static int kv_layers(const glm_backend *be) {
    return be->model->hp.n_layer + (be->params.mtp && be->model->has_mtp ? 1 : 0);
}

static size_t page_bytes(const glm_hparams *hp, int fp8, int n_layers) {
    const size_t per = (size_t)hp->n_head_kv * GLM_PAGE * hp->head_dim;
    size_t b = 2 * per * (fp8 ? 1 : 2);
    if (fp8) b += 2 * (size_t)hp->n_head_kv * GLM_PAGE * 4;
    return b * n_layers;
}

/* Device bytes reserve() takes for max_tokens (asked before it runs). */
static size_t scratch_bytes(const glm_hparams *hp, int max_tokens, int n_sm);

static int cu_kv_pages_fit(glm_backend *be, const glm_ctx_params *p) {
    cu_impl *c = IMPL(be);
    const glm_hparams *hp = &be->model->hp;
    size_t fr = 0, tot = 0;
    if (cudaSetDevice(c->gpu) != cudaSuccess || cudaMemGetInfo(&fr, &tot) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    const int nb = p->n_batch > 0 ? p->n_batch : 512;
    const size_t act = scratch_bytes(hp, nb, c->n_sm) +
                       (size_t)nb * 4 * (4 * (size_t)hp->n_embd + 4 * (size_t)hp->n_head * hp->head_dim) + (512u << 20);
    if (fr <= act) return 0;
    const double frac = p->kv_frac > 0.f ? p->kv_frac : 0.9;
    const double pages = frac * (double)(fr - act) / (double)page_bytes(hp, p->kv_type == GLM_KV_FP8, kv_layers(be));
    return pages > 1e9 ? 1000000000 : (int)pages;
}

static int cu_kv_init(glm_backend *be, int n_pages, glm_kv_type type) {
    cu_impl *c = IMPL(be);
    const glm_hparams *hp = &be->model->hp;
    CK(cudaSetDevice(c->gpu));
    if (type == GLM_KV_F32) return glm_err(GLM_ERR_UNSUPPORTED, "CUDA backend keeps the KV cache in BF16 or FP8, not F32");
    if (c->kv_mem) { cudaFree(c->kv_mem); c->kv_mem = NULL; }
    c->kv_fp8 = type == GLM_KV_FP8;
    const int n_kv = kv_layers(be);
    const size_t total = page_bytes(hp, c->kv_fp8, n_kv) * (size_t)n_pages;
    char what[96];
    snprintf(what, sizeof what, "the KV cache (%d pages of %d tokens)", n_pages, GLM_PAGE);
    RUN(dev_alloc(&c->kv_mem, total, what));
    c->n_pages = n_pages;
    free(c->kv);
    c->kv = calloc((size_t)n_kv, sizeof(glm_cu_kv));
    if (!c->kv) return glm_err(GLM_ERR_OOM, "out of memory");
    const size_t per = (size_t)n_pages * hp->n_head_kv * GLM_PAGE * hp->head_dim * (c->kv_fp8 ? 1 : 2);
    const size_t sper = c->kv_fp8 ? (size_t)n_pages * hp->n_head_kv * GLM_PAGE * 4 : 0;
    uint8_t *p = c->kv_mem;
    for (int il = 0; il < n_kv; il++) {
        glm_cu_kv *kv = &c->kv[il];
        kv->fp8 = c->kv_fp8;
        kv->k = p; p += per;
        kv->v = p; p += per;
        if (c->kv_fp8) { kv->ks = (float *)p; p += sper; kv->vs = (float *)p; p += sper; }
    }
    return GLM_OK;
}

/* ---- activation scratch ---- */
/* Decode attention: blocks of (token, KV head) split along the context until there are
 * att_waves() blocks an SM (GLM_CUDA_ATT_WAVES, default 2); splits past a token's
 * context exit at once. */
static int att_waves(void) {
    static int w;
    if (!w) {
        const char *e = getenv("GLM_CUDA_ATT_WAVES");
        const int v = e && *e ? atoi(e) : 2;
        w = v < 1 ? 1 : v > 64 ? 64 : v;
    }
    return w;
}

static int att_splits(int n_sm, const glm_hparams *hp, int T) {
    const int blocks = T * hp->n_head_kv, want = att_waves() * n_sm;
    if (blocks >= want) return 1;
    int s = (want + blocks - 1) / blocks;
    return s > CU_MAX_SPLIT ? CU_MAX_SPLIT : s;
}

static size_t ff_width(const glm_hparams *hp) {
    size_t F = (size_t)hp->n_ff_exp * (hp->n_expert_shared > 0 ? hp->n_expert_shared : 1);
    if (hp->n_dense_layer > 0 && (size_t)hp->n_ff > F) F = (size_t)hp->n_ff;
    return F;
}

/* The activation scratch for max_tokens tokens, in bytes a buffer: one table for the
 * allocation (cu_reserve) and the estimate made before it (scratch_bytes). */
typedef struct {
    size_t lt_y;      /* BF16 output cuBLASLt writes before widening */
    size_t plan;      /* the batch plan (host and device) */
    size_t xq, xs;    /* quantised activations and their scales */
    size_t gtmp;      /* GEMM scratch (gate and up) */
    size_t rlog;      /* router logits */
    size_t mid, eo;   /* expert activations and outputs */
    size_t g_off, g_active, g_rows, g_tiles;  /* expert groups; the wgmma tile list */
    size_t att_ws;    /* split attention partials */
    size_t part;      /* partial sums of dense products split along K (graph-sized batches) */
    size_t logits;    /* final-norm rows and logits of one chunk (logit_chunk rows) */
    int logit_chunk;
} cu_sizes;

static cu_sizes scratch_sizes(const glm_hparams *hp, int max_tokens, int n_sm) {
    cu_sizes z;
    const size_t T = (size_t)max_tokens, D = (size_t)hp->n_embd;
    const size_t k = hp->n_expert_used > 0 ? (size_t)hp->n_expert_used : 1;
    const size_t F = ff_width(hp), Fe = hp->n_ff_exp > 0 ? (size_t)hp->n_ff_exp : 1;
    const size_t Q = (size_t)hp->n_head * hp->head_dim, E = hp->n_expert > 0 ? (size_t)hp->n_expert : 1;
    size_t kmax = D > Q ? D : Q;
    if (F > kmax) kmax = F;
    if (Fe > kmax) kmax = Fe;
    const size_t rows = T * k;
    z.logit_chunk = max_tokens < 256 ? max_tokens : 256;

    size_t n = D;  /* widest product output */
    const size_t cand[4] = {Q, 2 * F, 2 * Fe, (size_t)hp->n_head_kv * hp->head_dim};
    for (int i = 0; i < 4; i++) if (cand[i] > n) n = cand[i];
    z.lt_y = T * n;
    if ((size_t)z.logit_chunk * hp->n_vocab > z.lt_y) z.lt_y = (size_t)z.logit_chunk * hp->n_vocab;
    z.lt_y *= 2;
    z.plan = (4 * T + 16) * 4;
    /* bf16 needs two bytes an element (4 spare rows); the prefill experts hold their sorted
     * rows (the shared expert's too) and each token's once */
    z.xq = (rows + 4) * kmax * 2;
    if ((rows + 2 * T + 4) * D > z.xq) z.xq = (rows + 2 * T + 4) * D;
    z.xs = ((rows + 2 * T + 4 * E + 4) * ((kmax + 127) / 128) + 16) * 4;  /* + 2T: the shared expert, per-token */
    z.gtmp = T * 2 * F;
    if ((rows + T + 4) * 2 * Fe > z.gtmp) z.gtmp = (rows + T + 4) * 2 * Fe;  /* + T: the shared expert */
    z.gtmp *= 4;
    z.rlog = T * E * 4;
    z.mid = (rows + T) * Fe * 4;  /* + T: the shared expert's rows when decode groups take it */
    z.eo = (rows + T + 4) * D * 4;
    z.g_off = (E + 2) * 4;
    z.g_active = (E + 1) * 4;
    z.g_rows = (rows + T) * 4;
    z.g_tiles = glm_cu_wgmma_tiles_ints((int)(rows + T), (int)E + 1) * 4;
    size_t aw = 0;
    for (int t = 1; t <= max_tokens; t++) {
        const int sp = att_splits(n_sm, hp, t);
        if (sp == 1) break;
        const size_t a = (size_t)t * sp * hp->n_head * (hp->head_dim + 2);
        if (a > aw) aw = a;
    }
    z.att_ws = (aw ? aw : 1) * 4;
    /* four splits of the widest dense product (gate and up together) at 64 tokens; more
     * tokens or splits than fit take fewer splits (glm_cu_mma_splits) */
    z.part = (T < 64 ? T : 64) * 4 * 2 * kmax * 4;
    z.logits = (size_t)z.logit_chunk * (D + hp->n_vocab) * 4;
    return z;
}

static size_t scratch_bytes(const glm_hparams *hp, int max_tokens, int n_sm) {
    const cu_sizes z = scratch_sizes(hp, max_tokens, n_sm);
    return z.lt_y + z.plan + z.xq + z.xs + z.gtmp + z.rlog + z.mid + z.eo + 2 * z.g_off + z.g_active + 16 +
           2 * z.g_rows + z.g_tiles + z.att_ws + z.part + z.logits + (16u << 20);
}

static int cu_reserve(glm_backend *be, int max_tokens) {
    cu_impl *c = IMPL(be);
    const glm_hparams *hp = &be->model->hp;
    CK(cudaSetDevice(c->gpu));
    if (max_tokens <= 0) return glm_err(GLM_ERR_ARG, "reserve: %d tokens", max_tokens);
    if (c->max_tokens) return glm_err(GLM_ERR_ARG, "reserve: already reserved for %d tokens", c->max_tokens);
    c->max_tokens = max_tokens;
    const cu_sizes z = scratch_sizes(hp, max_tokens, c->n_sm);
    const size_t D = (size_t)hp->n_embd;
    RUN(dev_alloc(&c->lt_y, z.lt_y, "cuBLASLt outputs"));
    RUN(glm_cu_lt_new(&c->lt, c->lt_ws, CU_LT_WS, c->lt_y, z.lt_y));

    c->plan_cap = z.plan / 4;
    CK(cudaMallocHost((void **)&c->h_plan, z.plan));
    RUN(dev_alloc((void **)&c->d_plan, z.plan, "the batch plan"));
    c->xq_bytes = z.xq;
    RUN(dev_alloc((void **)&c->xq, z.xq, "quantised activations"));
    c->xs_floats = z.xs / 4;
    RUN(dev_alloc((void **)&c->xs, z.xs, "activation scales"));
    c->gtmp_floats = z.gtmp / 4;
    RUN(dev_alloc((void **)&c->gtmp, z.gtmp, "GEMM scratch"));
    RUN(dev_alloc((void **)&c->rlog, z.rlog, "router logits"));
    RUN(dev_alloc((void **)&c->mid, z.mid, "expert activations"));
    RUN(dev_alloc((void **)&c->eo, z.eo, "expert outputs"));
    RUN(dev_alloc((void **)&c->g_off, z.g_off, "expert offsets"));
    RUN(dev_alloc((void **)&c->g_off4, z.g_off, "expert offsets"));
    RUN(dev_alloc((void **)&c->g_active, z.g_active, "expert list"));
    RUN(dev_alloc((void **)&c->g_nact, 16, "expert count"));
    RUN(dev_alloc((void **)&c->g_rows, z.g_rows, "expert rows"));
    RUN(dev_alloc((void **)&c->g_slot, z.g_rows, "expert slots"));
    RUN(dev_alloc((void **)&c->g_ids, z.g_rows, "expert ids"));
    int wg = 0;  /* the grouped wgmma kernel's tile list, where its route can run */
    for (int il = 0; c->moe && c->wgmma && il < hp->n_layer + 1; il++) wg |= c->moe[il].wgmma_ok;
    if (wg) RUN(dev_alloc((void **)&c->g_tiles, z.g_tiles, "expert tiles"));
    CK(cudaMallocHost((void **)&c->h_off, z.g_active * 2));
    c->att_ws_floats = z.att_ws / 4;
    RUN(dev_alloc((void **)&c->att_ws, z.att_ws, "attention partials"));
    c->part_floats = z.part / 4;
    RUN(dev_alloc((void **)&c->part, z.part, "split-K partial sums"));
    c->logit_chunk = z.logit_chunk;
    RUN(dev_alloc((void **)&c->fnorm, (size_t)c->logit_chunk * D * 4, "final norm rows"));
    RUN(dev_alloc((void **)&c->logits_d, (size_t)c->logit_chunk * hp->n_vocab * 4, "logits"));
    CK(cudaMallocHost((void **)&c->logits_h, (size_t)c->logit_chunk * hp->n_vocab * 4));
    if (be->params.mtp) {
        c->rd_cap = (size_t)max_tokens * D;
        CK(cudaMallocHost((void **)&c->rd_pin, c->rd_cap * sizeof(float)));
    }
    c->comm = be->comm;
    if (c->comm) {
        const size_t N = (size_t)glm_comm_size(c->comm), Vmax = ((size_t)hp->n_vocab + N - 1) / N;
        RUN(dev_alloc((void **)&c->tp_send, (size_t)c->logit_chunk * Vmax * 4, "the logits gather"));
        RUN(dev_alloc((void **)&c->tp_recv, N * c->logit_chunk * Vmax * 4, "the logits gather"));
    }
    return GLM_OK;
}

static void *cu_alloc(glm_backend *be, size_t n) {
    cu_impl *c = IMPL(be);
    if (cudaSetDevice(c->gpu) != cudaSuccess) { cudaGetLastError(); return NULL; }
    void *p = NULL;
    if (dev_alloc(&p, n, "activations")) return NULL;
    if (c->n_allocs == c->cap_allocs) {
        int cap = c->cap_allocs ? 2 * c->cap_allocs : 32;
        void **a = realloc(c->allocs, (size_t)cap * sizeof(void *));
        if (!a) { cudaFree(p); glm_err(GLM_ERR_OOM, "out of memory"); return NULL; }
        c->allocs = a;
        c->cap_allocs = cap;
    }
    c->allocs[c->n_allocs++] = p;
    return p;
}

/* Waits for the stream: under tensor parallelism through the communicator, so that a
 * collective whose peer failed ends in an error naming it instead of a hang. */
static int stream_wait(cu_impl *c) {
    if (c->comm) return glm_comm_wait(c->comm, c->st);
    CK(cudaStreamSynchronize(c->st));
    return GLM_OK;
}

/* ---- graphs ---- */
static void graphs_clear(cu_impl *c) {
    for (int i = 0; i < c->n_graphs; i++) cudaGraphExecDestroy(c->graphs[i].exec);
    c->n_graphs = 0;
}

/* Ends a capture that an op's error left open. */
static void capture_abort(cu_impl *c) {
    if (c->mode != MODE_CAPTURE) return;
    cudaGraph_t g = NULL;
    cudaStreamEndCapture(c->st, &g);
    if (g) cudaGraphDestroy(g);
    cudaGetLastError();
    c->mode = MODE_EAGER;
}

static const int32_t *P_TOK(cu_impl *c) { return c->d_plan; }
static const int32_t *P_POS(cu_impl *c) { return c->d_plan + c->max_tokens; }
static const int32_t *P_SEQ(cu_impl *c) { return c->d_plan + 2 * c->max_tokens; }
static const int32_t *P_OUT(cu_impl *c) { return c->d_plan + 3 * c->max_tokens; }
static const int32_t *P_PT(cu_impl *c) { return c->d_plan + 4 * c->max_tokens; }

static int cu_begin(glm_backend *be, const glm_plan *p) {
    cu_impl *c = IMPL(be);
    CK(cudaSetDevice(c->gpu));
    capture_abort(c);
    const int T = p->n_tokens, M = c->max_tokens;
    if (T <= 0 || T > M) return glm_err(GLM_ERR_ARG, "batch of %d tokens (reserved %d)", T, M);
    if (p->n_out < 0 || p->n_out > T) return glm_err(GLM_ERR_ARG, "%d logit rows for %d tokens", p->n_out, T);
    if (!c->kv) return glm_err(GLM_ERR_ARG, "KV cache not initialised");
    const size_t pt = (size_t)p->n_seq_slots * p->max_pages;
    const size_t need = 5 * (size_t)M + 1 + pt;
    if (need > c->plan_cap) {  /* grow: graphs hold the old pointers */
        graphs_clear(c);
        CK(cudaStreamSynchronize(c->st));
        cudaFreeHost(c->h_plan);
        cudaFree(c->d_plan);
        c->h_plan = NULL; c->d_plan = NULL;
        c->plan_cap = need + 1024;
        CK(cudaMallocHost((void **)&c->h_plan, c->plan_cap * 4));
        RUN(dev_alloc((void **)&c->d_plan, c->plan_cap * 4, "the batch plan"));
    }
    int32_t *h = c->h_plan;
    memcpy(h, p->tokens, (size_t)T * 4);
    memcpy(h + M, p->pos, (size_t)T * 4);
    memcpy(h + 2 * M, p->seq, (size_t)T * 4);
    if (p->n_out) memcpy(h + 3 * M, p->out_rows, (size_t)p->n_out * 4);
    memcpy(h + 4 * M, p->page_table, pt * 4);
    for (int t = 0; t < T; t++) {  /* the kernels index pages with these: check them here */
        if (p->seq[t] < 0 || p->seq[t] >= p->n_seq_slots || p->pos[t] < 0 || p->pos[t] / GLM_PAGE >= p->max_pages)
            return glm_err(GLM_ERR_ARG, "plan row %d: sequence %d position %d outside the page table", t, p->seq[t], p->pos[t]);
        const int pg = p->page_table[(size_t)p->seq[t] * p->max_pages + p->pos[t] / GLM_PAGE];
        if (pg < 0 || pg >= c->n_pages)
            return glm_err(GLM_ERR_ARG, "plan row %d: page %d outside the cache of %d pages", t, pg, c->n_pages);
    }
    c->T = T; c->n_out = p->n_out; c->n_seq_slots = p->n_seq_slots; c->max_pages = p->max_pages;
    c->hash = 0x243f6a8885a308d3ull;
    c->cur = NULL;
    c->n_pl = 0;
    c->pa_x = NULL;
    c->n_pb = 0;
    c->xq_of = NULL;
    c->n_ev = 0;
    c->mode = MODE_EAGER;
    c->rd_host = NULL;
    c->n_tiles = 0;
    c->samp_n = 0;
    /* ranks sharing a GPU sum through host memory: no graphs (the route stays the same) */
    const int capturable = !c->comm || strcmp(glm_comm_kind_name(c->comm), "shared-gpu") != 0;
    if (c->use_graphs && capturable && !p->eager && T <= c->graph_max) {
        for (int i = 0; i < c->n_graphs; i++) {
            cu_graph *g = &c->graphs[i];
            if (g->T == T && g->n_out == p->n_out && g->n_seq_slots == p->n_seq_slots && g->max_pages == p->max_pages &&
                g->hidden == (p->hidden_host != NULL)) {
                c->cur = g;
                c->mode = MODE_REPLAY;
                return GLM_OK;
            }
        }
        if (c->n_graphs < CU_MAX_GRAPHS) {
            CK(cudaStreamBeginCapture(c->st, cudaStreamCaptureModeThreadLocal));
            c->mode = MODE_CAPTURE;
        }
    }
    size_t bytes = (4 * (size_t)M + pt) * 4;
    /* above graph_max (the same route with graphs on or off): tensor-core attention when
     * the tiles are full enough (16 rows or more on average) */
    const glm_hparams *hp = &be->model->hp;
    if (T > c->graph_max && c->fa && glm_cu_attention_prefill_ok(hp->n_head, hp->n_head_kv, hp->head_dim)) {
        c->tile_off = (int)(4 * (size_t)M + pt);
        const int n = glm_cu_attention_tiles(p->seq, T, h + c->tile_off);
        if (16 * n <= T) {
            c->n_tiles = n;
            bytes += (size_t)(n + 1) * 4;
        }
    }
    cudaError_t e = cudaMemcpyAsync(c->d_plan, c->h_plan, bytes, cudaMemcpyHostToDevice, c->st);
    if (e != cudaSuccess) { capture_abort(c); return glm_err(GLM_ERR_CUDA, "plan upload: %s", cudaGetErrorString(e)); }
    return GLM_OK;
}

static glm_cu_plan plan_of(cu_impl *c) {
    glm_cu_plan p = {P_POS(c), P_SEQ(c), P_PT(c), c->max_pages};
    return p;
}

static const char *dt_name(const glm_cu_mat *m) {
    if (m->dtype == GLM_CU_FP8) return m->scale_kind == GLM_CU_SCALE_BLOCK ? "fp8b" : "fp8c";
    return m->dtype == GLM_CU_BF16 ? "bf16" : "f32";
}

static void prof_mat(cu_impl *c, const char *op, const glm_cu_mat *m, int mult) {
    if (!c->prof) return;
    char name[64];
    snprintf(name, sizeof name, "%s %dx%d %s %s", op, m->N, m->K, dt_name(m), c->T <= c->graph_max ? "dec" : "pre");
    prof_mark(c, name, (double)mult * m->N * m->K * dt_size(m->dtype));
}

static void prof_op(cu_impl *c, const char *op) {
    if (!c->prof) return;
    char name[64];
    snprintf(name, sizeof name, "%s %s", op, c->T <= c->graph_max ? "dec" : "pre");
    prof_mark(c, name, 0);
}

/* The deferred bias of y, taken off the list (NULL if none). */
static const float *take_bias(cu_impl *c, const float *y) {
    for (int i = 0; i < c->n_pb; i++)
        if (c->pb[i].y == y) {
            const float *b = c->pb[i].b;
            c->pb[i] = c->pb[--c->n_pb];
            return b;
        }
    return NULL;
}

/* Launches the deferred biases (when biases), GEMVs and add. */
static int flush_ops(cu_impl *c, int biases) {
    while (biases && c->n_pb) {
        const int i = --c->n_pb;
        prof_op(c, "add bias");
        if (c->pb[i].y == c->xq_of) c->xq_of = NULL;
        RUN(glm_cu_add_bias(c->pb[i].y, c->pb[i].b, c->T, c->pb[i].N, c->pb[i].N, c->st));
    }
    if (c->n_pl) {
        const int n = c->n_pl;
        c->n_pl = 0;
        if (n == 1) {
            prof_mat(c, "linear", &c->pl[0].m, 1);
            RUN(glm_cu_gemv(&c->pl[0].m, NULL, c->pl_x, c->pl[0].m.K, c->pl[0].bias, c->pl[0].y, c->pl[0].m.N, c->pl_T, NULL, 0, c->gemv_flags, c->st));
        } else {
            glm_cu_mat ws[4] = {0};
            const float *bs[4] = {0};
            float *ys[4] = {0};
            int ld[4] = {0};
            for (int i = 0; i < n; i++) { ws[i] = c->pl[i].m; bs[i] = c->pl[i].bias; ys[i] = c->pl[i].y; ld[i] = c->pl[i].m.N; }
            if (c->prof) {
                glm_cu_mat all = ws[0];
                for (int i = 1; i < n; i++) all.N += ws[i].N;
                prof_mat(c, "linear xN", &all, 1);
            }
            int rc = glm_cu_gemv_multi(ws, bs, ys, ld, n, c->pl_x, ws[0].K, c->pl_T, c->gemv_flags, c->st);
            if (rc == GLM_ERR_UNSUPPORTED) {  /* unaligned: one launch each */
                rc = GLM_OK;
                for (int i = 0; i < n && !rc; i++)
                    rc = glm_cu_gemv(&ws[i], NULL, c->pl_x, ws[i].K, bs[i], ys[i], ld[i], c->pl_T, NULL, 0, c->gemv_flags, c->st);
            }
            RUN(rc);
        }
    }
    if (c->pa_x) {
        float *x = c->pa_x;
        c->pa_x = NULL;
        if (x == c->xq_of) c->xq_of = NULL;
        prof_op(c, "add");
        RUN(glm_cu_add(x, c->pa_y, c->pa_n, c->st));
    }
    return GLM_OK;
}
static int flush(cu_impl *c) { return flush_ops(c, 1); }

/* ---- ops ---- */
static int cu_embed(glm_backend *be, float *x) {
    cu_impl *c = IMPL(be);
    const glm_model *m = be->model;
    if (op_skip(c, 1, x, NULL, NULL, c->T)) return GLM_OK;
    RUN(flush(c));
    prof_op(c, "embed");
    return glm_cu_embed(m->tok_embd.dev, w_dev_dtype(&m->tok_embd), P_TOK(c), c->T, m->hp.n_embd, m->hp.n_vocab, x, c->st);
}

static int cu_rmsnorm(glm_backend *be, const float *x, const glm_weight *w, float *out, int rows) {
    cu_impl *c = IMPL(be);
    if (op_skip(c, 2, x, w, out, rows)) return GLM_OK;
    if (c->pa_x == x && c->pa_n == (size_t)rows * w->cols && !c->n_pl && !c->n_pb && c->pa_y != out) {
        c->pa_x = NULL;
        prof_op(c, "add+rmsnorm");
        return glm_cu_add_rmsnorm((float *)x, c->pa_y, w->dev, out, rows, (int)w->cols, be->model->hp.rms_eps, c->st);
    }
    RUN(flush(c));
    prof_op(c, "rmsnorm");
    return glm_cu_rmsnorm(x, NULL, w->dev, out, rows, (int)w->cols, be->model->hp.rms_eps, c->st);
}

/* x[T, K] (row stride ldx) quantised to FP8 into c->xq / c->xs in layout blk (see
 * glm_cu_quant_fp8; scales' row stride ld_s), unless they already hold it: with reuse,
 * the previous linear's activations of the same x are kept (c->xq_of). */
static int quant_act(cu_impl *c, const float *x, int ldx, int T, int K, int blk, int ld_s, int reuse) {
    if (reuse && c->xq_of == x && c->xq_T == T && c->xq_K == K && c->xq_blk == blk && ldx == K) return GLM_OK;
    RUN(glm_cu_quant_fp8(x, ldx, NULL, T, K, blk, c->xq, c->xs, ld_s, c->st));
    c->xq_of = reuse && ldx == K ? x : NULL;
    c->xq_T = T; c->xq_K = K; c->xq_blk = blk;
    return GLM_OK;
}

/* y[T, N] = x[T, K] W^T (+bias): GEMV for small T, cuBLASLt above, tiled otherwise.
 * reuse: x's FP8 activations may be those of the previous linear (c->xq_of). */
static int lin_x(cu_impl *c, const glm_cu_mat *w, const float *bias, const float *x, int ldx, float *y, int ldy, int T,
                 int reuse) {
    if (T <= c->gemv_max) return glm_cu_gemv(w, NULL, x, ldx, bias, y, ldy, T, NULL, 0, c->gemv_flags, c->st);
    /* a few tokens more than the GEMV takes: FP8 weights on the tensor-core kernel split
     * along K (measured faster than cuBLASLt at 8 tokens, slower at 32 and 64: docs/PERF.md
     * run 19) */
    if (T <= c->dense_mma_max && glm_cu_mma_ok(w) && (size_t)T * w->K <= c->xq_bytes &&
        (size_t)T * (w->K / 128) <= c->xs_floats) {
        RUN(quant_act(c, x, ldx, T, w->K, 2, 0, reuse));
        const int S = glm_cu_mma_splits(w, T, c->n_sm, c->part_floats);
        return glm_cu_gemm_fp8_mma_splitk(w, c->xq, c->xs, bias, y, ldy, T, S, S > 1 ? c->part : NULL, c->st);
    }
    if (glm_cu_lt_shape_ok(w) && (size_t)T * w->K <= c->xq_bytes) {
        int rc;
        if (w->dtype == GLM_CU_FP8) {
            const int blk = w->scale_kind == GLM_CU_SCALE_BLOCK;
            /* 1x128 activation scales need a multiple of 4 tokens: the rest go through the GEMV */
            const int T4 = blk ? T & ~3 : T;
            if (T4 < T) RUN(glm_cu_gemv(w, NULL, x + (size_t)T4 * ldx, ldx, bias, y + (size_t)T4 * ldy, ldy, T - T4, NULL, 0, c->gemv_flags, c->st));
            if (!T4) return GLM_OK;
            RUN(quant_act(c, x, ldx, T4, w->K, blk, T4, reuse));
            rc = glm_cu_lt_matmul(c->lt, w, 0, c->xq, c->xs, T4, T4, y, ldy, c->st);
            if (rc == GLM_OK) return bias ? glm_cu_add_bias(y, bias, T4, w->N, ldy, c->st) : GLM_OK;
            if (rc != GLM_ERR_UNSUPPORTED) return rc;
            T = T4;  /* the GEMV above already did the rest */
        } else if (w->dtype == GLM_CU_BF16) {
            c->xq_of = NULL;
            RUN(glm_cu_to_bf16(x, ldx, NULL, T, w->K, (uint16_t *)c->xq, c->st));
            rc = glm_cu_lt_matmul(c->lt, w, 0, c->xq, NULL, 0, T, y, ldy, c->st);
        } else if (ldx == w->K) {  /* float32 (the router): as it is */
            rc = glm_cu_lt_matmul(c->lt, w, 0, x, NULL, 0, T, y, ldy, c->st);
        } else {
            rc = GLM_ERR_UNSUPPORTED;
        }
        if (rc == GLM_OK) return bias ? glm_cu_add_bias(y, bias, T, w->N, ldy, c->st) : GLM_OK;
        if (rc != GLM_ERR_UNSUPPORTED) return rc;
    }
    /* up to graph_max tokens the GEMV in chunks of 8 (weights re-read from L2) beats the
     * tiled kernel, whose grid is a handful of blocks for small weights like the router */
    if (T <= c->graph_max) return glm_cu_gemv(w, NULL, x, ldx, bias, y, ldy, T, NULL, 0, c->gemv_flags, c->st);
    return glm_cu_gemm_tiled(w, x, ldx, bias, y, ldy, T, NULL, 0, c->st);
}
static int lin(cu_impl *c, const glm_cu_mat *w, const float *bias, const float *x, int ldx, float *y, int ldy, int T) {
    c->xq_of = NULL;  /* xq is overwritten for another purpose, or not reused */
    return lin_x(c, w, bias, x, ldx, y, ldy, T, 0);
}

static int cu_linear(glm_backend *be, const glm_weight *w, const glm_weight *bias, const float *x, float *y, int T) {
    cu_impl *c = IMPL(be);
    if (op_skip(c, 3, w, x, y, T)) return GLM_OK;
    const glm_cu_mat m = mat_of(w);
    const float *b = bias && !w_empty(bias) ? bias->dev : NULL;
    if (c->fuse && T <= c->gemv_max && m.K % 16 == 0) {
        if (c->pa_x || (c->n_pl && (c->pl_x != x || c->pl_T != T || c->n_pl == 4 || c->pl[0].m.dtype != m.dtype ||
                                    c->pl[0].m.scale_kind != m.scale_kind || c->pl[0].m.K != m.K)))
            RUN(flush(c));
        for (int i = 0; i < c->n_pl; i++)  /* a queued product must not read what this one writes */
            if ((const float *)c->pl[i].y == x) RUN(flush(c));
        c->pl[c->n_pl].m = m;
        c->pl[c->n_pl].bias = b;
        c->pl[c->n_pl].y = y;
        c->pl_x = x;
        c->pl_T = T;
        c->n_pl++;
        return GLM_OK;
    }
    /* a product that does not read a deferred bias's output leaves it deferred */
    int reads = 0;
    for (int i = 0; i < c->n_pb; i++) reads |= c->pb[i].y == x;
    RUN(flush_ops(c, reads));
    prof_mat(c, "linear", &m, 1);
    if (b && c->fuse && T > c->gemv_max && c->n_pb < 3) {  /* the bias waits for the op that reads y */
        c->pb[c->n_pb].y = y;
        c->pb[c->n_pb].b = b;
        c->pb[c->n_pb].N = m.N;
        c->n_pb++;
        b = NULL;
    }
    if (y == c->xq_of) c->xq_of = NULL;  /* written now */
    return lin_x(c, &m, b, x, m.K, y, m.N, T, 1);
}

static int cu_glu(glm_backend *be, const glm_weight *gate, const glm_weight *up, const float *x, float *y, int T) {
    cu_impl *c = IMPL(be);
    if (op_skip(c, 4, gate, x, y, T)) return GLM_OK;
    RUN(flush(c));
    const glm_cu_mat g = mat_of(gate), u = mat_of(up);
    const int F = g.N;
    prof_mat(c, "glu", &g, 2);
    if (T <= c->gemv_max) return glm_cu_gemv(&g, &u, x, g.K, NULL, y, F, T, NULL, 0, c->gemv_flags, c->st);
    if ((size_t)T * 2 * F > c->gtmp_floats) return glm_err(GLM_ERR_ARG, "glu: %d x %d exceeds the scratch", T, 2 * F);
    glm_cu_mat gu = g;
    gu.N = 2 * F;
    const int fused = (const uint8_t *)u.data == (const uint8_t *)g.data + (size_t)F * g.K * dt_size(g.dtype) &&
                      (g.scale_kind != GLM_CU_SCALE_BLOCK || F % 128 == 0) && glm_cu_lt_shape_ok(&gu);
    if (fused) {
        RUN(lin(c, &gu, NULL, x, g.K, c->gtmp, 2 * F, T));
    } else {
        RUN(lin(c, &g, NULL, x, g.K, c->gtmp, 2 * F, T));
        RUN(lin(c, &u, NULL, x, g.K, c->gtmp + F, 2 * F, T));
    }
    return glm_cu_swiglu(c->gtmp, 2 * F, y, F, T, F, c->st);
}

static int cu_attention(glm_backend *be, int il, float *q, float *k, const float *v, float *out) {
    cu_impl *c = IMPL(be);
    const glm_hparams *hp = &be->model->hp;
    const glm_layer *L = &be->model->layers[il];
    if (op_skip(c, 5, q, k, out, il * 65536 + c->T)) return GLM_OK;
    /* deferred q/k/v biases go in with the RoPE pass, which writes v + bv back to v */
    const float *bq = take_bias(c, q), *bk = take_bias(c, k), *bv = take_bias(c, v);
    RUN(flush(c));
    prof_op(c, "attention");
    const glm_cu_plan p = plan_of(c);
    const glm_cu_kv *kv = &c->kv[il];
    RUN(glm_cu_rope_store(q, k, (float *)v, bq, bk, bv, c->T, hp->n_head, hp->n_head_kv, hp->head_dim, hp->n_rot,
                          hp->rope_theta, hp->use_qk_norm && !w_empty(&L->q_norm) ? L->q_norm.dev : NULL,
                          hp->use_qk_norm && !w_empty(&L->k_norm) ? L->k_norm.dev : NULL, hp->rms_eps, &p, kv, c->st));
    if (c->n_tiles)
        return glm_cu_attention_prefill(q, out, hp->n_head, hp->n_head_kv, hp->head_dim, &p, kv,
                                        c->d_plan + c->tile_off, c->n_tiles, c->st);
    return glm_cu_attention(q, out, c->T, hp->n_head, hp->n_head_kv, hp->head_dim, &p, kv, att_splits(c->n_sm, hp, c->T),
                            c->att_ws, c->st);
}

static int cu_moe_route(glm_backend *be, int il, const float *h, int32_t *ids, float *w) {
    cu_impl *c = IMPL(be);
    const glm_hparams *hp = &be->model->hp;
    const glm_layer *L = &be->model->layers[il];
    if (op_skip(c, 6, h, ids, w, il * 65536 + c->T)) return GLM_OK;
    RUN(flush(c));
    const glm_cu_mat r = mat_of(&L->router);
    prof_mat(c, "moe router", &r, 1);
    RUN(lin(c, &r, NULL, h, r.K, c->rlog, r.N, c->T));
    prof_op(c, "moe topk");
    return glm_cu_moe_topk(c->rlog, w_empty(&L->router_bias) ? NULL : L->router_bias.dev, c->T, hp->n_expert,
                           hp->n_expert_used, hp->norm_topk_prob, hp->routed_scale, ids, w, c->st);
}

/* Prefill MoE on cuBLASLt, where the grouped wgmma kernel does not apply (or with
 * GLM_CUDA_WGMMA=0): the expert groups are contiguous in the sorted order, so one
 * product per touched expert covers gate and up together, then one for down. Reads
 * the group offsets back to the host (a round trip per MoE layer). */
static int moe_prefill_lt(cu_impl *c, const cu_moe *m, const float *h, int T, int k, int E, int D, int F) {
    const int rows = T * k;
    const int fp8 = m->gate.dtype == GLM_CU_FP8, blk = m->gate.scale_kind == GLM_CU_SCALE_BLOCK;
    int32_t *off = c->h_off, *off4 = c->h_off + E + 1;
    CK(cudaMemcpyAsync(off, c->g_off, (size_t)(E + 1) * 4, cudaMemcpyDeviceToHost, c->st));
    CK(cudaMemcpyAsync(off4, c->g_off4, (size_t)(E + 1) * 4, cudaMemcpyDeviceToHost, c->st));
    RUN(stream_wait(c));
    const size_t esz = fp8 ? 1 : 2;
    /* channel scales take each expert's exact row count, so the products write disjoint
     * rows and may run side by side; the block format rounds to 4 rows (VEC128) and
     * runs in order on the main stream */
    const int side = fp8 && !blk && c->n_aux > 0;
    for (int half = 0; half < 2; half++) {
        const glm_cu_mat *w = half == 0 ? &m->gate_up : &m->down;
        const int K = half == 0 ? D : F;
        const float *x = half == 0 ? h : c->mid;
        const int32_t *gather = half == 0 ? c->g_rows : NULL;
        if (!fp8) RUN(glm_cu_to_bf16(x, K, gather, rows, K, (uint16_t *)c->xq, c->st));
        else RUN(glm_cu_quant_fp8_grouped(x, K, gather, c->g_off, c->g_off4, E, rows, K, !blk, c->xq, c->xs, c->st));
        const int KB = (K + 127) / 128;
        if (side) {
            CK(cudaEventRecord(c->ev_fork, c->st));
            for (int i = 0; i < c->n_aux; i++) CK(cudaStreamWaitEvent(c->aux[i], c->ev_fork, 0));
        }
        int rc = GLM_OK;
        for (int e = 0, j = 0; e < E && rc == GLM_OK; e++) {
            const int o = off[e], n = off[e + 1] - o;
            if (!n) continue;
            const float *xs = !fp8 ? NULL : blk ? c->xs + (size_t)KB * off4[e] : c->xs + off4[e];
            float *y = half == 0 ? c->gtmp + (size_t)o * 2 * F : c->eo + (size_t)o * D;
            const uint8_t *xq = c->xq + (size_t)o * K * esz;
            if (side) {
                const int s = j++ % c->n_aux;
                rc = glm_cu_lt_matmul(c->aux_lt[s], w, e, xq, xs, n, n, y, w->N, c->aux[s]);
            } else {
                /* rounded up to 4 rows: the extra rows read the next expert's (or spare) rows
                 * and write rows that the next expert, processed after, overwrites (or spare) */
                const int n4 = off4[e + 1] - off4[e];
                rc = glm_cu_lt_matmul(c->lt, w, e, xq, xs, n4, n4, y, w->N, c->st);
            }
        }
        if (side)  /* joined even after a failure: nothing may still write when we return */
            for (int i = 0; i < c->n_aux; i++) {
                CK(cudaEventRecord(c->ev_join[i], c->aux[i]));
                CK(cudaStreamWaitEvent(c->st, c->ev_join[i], 0));
            }
        if (rc) return rc;
        if (half == 0) RUN(glm_cu_swiglu(c->gtmp, 2 * F, c->mid, F, rows, F, c->st));
    }
    return GLM_OK;
}

static int cu_moe_experts(glm_backend *be, int il, const float *h, const int32_t *ids, const float *w, float *out,
                          int *with_shared) {
    cu_impl *c = IMPL(be);
    const glm_hparams *hp = &be->model->hp;
    const cu_moe *m = &c->moe[il];
    const int T = c->T, k = hp->n_expert_used, E = hp->n_expert, D = hp->n_embd, F = m->gate.N; /* the rank's rows */
    const int rows = T * k;
    const int dec = T <= c->graph_max || T <= c->gemv_max;
    const int mma = dec && T > c->mma_min && glm_cu_mma_ok(&m->gate) && glm_cu_mma_ok(&m->up) && glm_cu_mma_ok(&m->down);
    const int wg = !dec && c->wgmma && m->wgmma_ok && c->g_tiles;
    /* on the GEMV (decode) and the wgmma kernel (prefill) the shared expert rides in the
     * same launches as expert E, over every token */
    const int sh = m->shared && ((dec && !mma) || wg);
    *with_shared = sh;
    if (op_skip(c, 7, h, ids, out, il * 65536 + c->T)) return GLM_OK;
    RUN(flush(c));
    if (m->lo == m->hi) {  /* no expert rows on this rank: its part of the sum is zero */
        CK(cudaMemsetAsync(out, 0, (size_t)T * D * 4, c->st));
        return GLM_OK;
    }
    if (m->lo > 0 || m->hi < E) {  /* expert parallel: only the chosen experts this rank holds */
        RUN(glm_cu_moe_own(ids, rows, m->lo, m->hi, c->g_ids, c->st));
        ids = c->g_ids;
    }
    prof_op(c, sh ? "moe experts+shared" : "moe experts");
    RUN(glm_cu_moe_group(ids, T, k, E, sh, c->g_off, c->g_off4, c->g_active, c->g_nact, c->g_rows, c->g_slot, c->st));
    glm_cu_groups g = {c->g_active, c->g_nact, c->g_off, c->g_rows, (rows < E ? rows : E) + sh, T};
    int rc = GLM_ERR_UNSUPPORTED;
    if (mma) {
        /* decode, more tokens than the CUDA cores keep up with: FP8 tensor cores, activations
         * quantised per token and 128 columns; still no host round trip */
        glm_cu_groups gm = g;
        gm.max_count = T < 8 ? T : 8;
        RUN(glm_cu_quant_fp8(h, D, NULL, T, D, 2, c->xq, c->xs, 0, c->st));
        RUN(glm_cu_gemm_fp8_mma(&m->gate, &m->up, c->xq, c->xs, c->mid, F, T, &gm, 1, c->st));
        RUN(glm_cu_quant_fp8(c->mid, F, NULL, rows, F, 2, c->xq, c->xs, 0, c->st));
        RUN(glm_cu_gemm_fp8_mma(&m->down, NULL, c->xq, c->xs, c->eo, D, T, &gm, 0, c->st));
        rc = GLM_OK;
    } else if (dec) {
        /* decode: no host round trip; each block row of the grid is one touched expert */
        glm_cu_groups gv = g;
        gv.max_count = T < 4 ? T : 4;
        RUN(glm_cu_gemv(&m->gate, &m->up, h, D, NULL, c->mid, F, T, &gv, 1, c->gemv_flags, c->st));
        RUN(glm_cu_gemv(&m->down, NULL, c->mid, F, NULL, c->eo, D, T, &gv, 0, c->gemv_flags, c->st));
        rc = GLM_OK;
    } else if (wg) {
        /* prefill: every touched expert (and the shared one) in one launch per half, tiles
         * listed on the device */
        const int R = rows + sh * T, ld_s = (R + 3) & ~3;
        /* channel-scaled weights: one activation scale a token (as the dense products on
         * cuBLASLt), so the kernel scales once at the end; block weights: 1x128 blocks */
        const int blk = !(c->wgmma_tok && m->gate_up.scale_kind == GLM_CU_SCALE_CHANNEL &&
                          m->down.scale_kind == GLM_CU_SCALE_CHANNEL);
        /* each token quantised once, past the sorted rows, then copied to its positions */
        uint8_t *q_tok = c->xq + (size_t)R * D;
        float *s_tok = c->xs + (size_t)ld_s * (D / 128);
        RUN(glm_cu_quant_fp8(h, D, NULL, T, D, blk ? 2 : 0, q_tok, s_tok, 0, c->st));
        RUN(glm_cu_gather_fp8(q_tok, s_tok, blk ? D / 128 : 1, c->g_rows, R, D, c->xq, c->xs, ld_s, c->st));
        RUN(glm_cu_wgmma_tiles(c->g_off, E + sh, c->g_tiles, c->st));
        prof_mat(c, "moe wgmma gate+up", &m->gate_up, 0);
        /* gate+up and the expert outputs as BF16 in the float32 scratch */
        uint16_t *gu16 = (uint16_t *)c->gtmp, *eo16 = (uint16_t *)c->eo;
        RUN(glm_cu_gemm_fp8_wgmma(&m->gate_up, c->xq, c->xs, ld_s, gu16, 2 * F, R, E + sh, c->g_tiles, blk, c->st));
        prof_op(c, "moe swiglu+quant");
        RUN(glm_cu_swiglu_quant_fp8(gu16, 2 * F, R, F, blk, c->xq, c->xs, ld_s, c->st));
        prof_mat(c, "moe wgmma down", &m->down, 0);
        RUN(glm_cu_gemm_fp8_wgmma(&m->down, c->xq, c->xs, ld_s, eo16, D, R, E + sh, c->g_tiles, blk, c->st));
        rc = GLM_OK;
    } else if (m->fused_ok) {
        rc = moe_prefill_lt(c, m, h, T, k, E, D, F);
        if (rc && rc != GLM_ERR_UNSUPPORTED) return rc;
    }
    if (rc) {
        /* any format: grouped tiled products, still without a host round trip */
        RUN(glm_cu_gemm_tiled(&m->gate, h, D, NULL, c->gtmp, 2 * F, T, &g, 1, c->st));
        RUN(glm_cu_gemm_tiled(&m->up, h, D, NULL, c->gtmp + F, 2 * F, T, &g, 1, c->st));
        RUN(glm_cu_swiglu(c->gtmp, 2 * F, c->mid, F, rows, F, c->st));
        RUN(glm_cu_gemm_tiled(&m->down, c->mid, F, NULL, c->eo, D, T, &g, 0, c->st));
    }
    prof_op(c, "moe combine");
    return glm_cu_moe_combine(c->eo, wg, c->g_slot, w, T, k, D, sh, out, c->st);
}

static int cu_add(glm_backend *be, float *x, const float *y, size_t n) {
    cu_impl *c = IMPL(be);
    if (op_skip(c, 8, x, y, NULL, (int)n)) return GLM_OK;
    RUN(flush(c));
    if (c->fuse) {
        c->pa_x = x;
        c->pa_y = y;
        c->pa_n = n;
        return GLM_OK;
    }
    prof_op(c, "add");
    return glm_cu_add(x, y, n, c->st);
}

/* Tensor parallel: x[n] = the sum of every rank's x[n], on the stream (captured in the
 * step's graph under NCCL). */
static int cu_all_reduce(glm_backend *be, float *x, size_t n) {
    cu_impl *c = IMPL(be);
    if (op_skip(c, 10, x, NULL, NULL, (int)n)) return GLM_OK;
    if (!c->comm) return glm_err(GLM_ERR_ARG, "all-reduce on a backend without a communicator");
    RUN(flush(c));
    prof_op(c, "all-reduce");
    return glm_comm_all_reduce(c->comm, x, n, GLM_COMM_F32, c->st);
}

/* host[n] = src[n] and dst[n] = host[n] between the host and a backend buffer, outside a
 * pass's graph (a captured pass has not run yet when its ops return). */
static int cu_copy(glm_backend *be, void *dst, const void *src, size_t n, enum cudaMemcpyKind kind) {
    cu_impl *c = IMPL(be);
    if (c->mode != MODE_EAGER)
        return glm_err(GLM_ERR_NOT_IMPLEMENTED, "copying activations inside a graph-captured CUDA pass is not implemented");
    CK(cudaSetDevice(c->gpu));
    RUN(flush(c));
    CK(cudaMemcpyAsync(dst, src, n * sizeof(float), kind, c->st));
    return stream_wait(c);
}
static int cu_read(glm_backend *be, float *host, const float *src, size_t n) {
    cu_impl *c = IMPL(be);
    if (c->mode == MODE_EAGER) return cu_copy(be, host, src, n, cudaMemcpyDeviceToHost);
    /* a captured pass (the hidden states of a verify step): the copy goes into the graph,
     * into page-locked staging, and logits() hands it over once the pass has run */
    if (c->rd_host) return glm_err(GLM_ERR_NOT_IMPLEMENTED, "a second read in one graph-captured CUDA pass");
    if (n > c->rd_cap) return glm_err(GLM_ERR_ARG, "read of %zu values past the %zu reserved", n, c->rd_cap);
    c->rd_host = host;
    c->rd_n = n;
    if (op_skip(c, 11, src, NULL, NULL, (int)n)) return GLM_OK;   /* replay: the graph has the copy */
    RUN(flush(c));
    CK(cudaMemcpyAsync(c->rd_pin, src, n * sizeof(float), cudaMemcpyDeviceToHost, c->st));
    return GLM_OK;
}
static int cu_write(glm_backend *be, float *dst, const float *host, size_t n) {
    return cu_copy(be, dst, host, n, cudaMemcpyHostToDevice);
}

/* Whether dst lies in the page-locked logits buffer we gave out. */
static int pinned_dst(const cu_impl *c, const float *dst) {
    return c->pin && (const uint8_t *)dst >= (const uint8_t *)c->pin &&
           (const uint8_t *)dst < (const uint8_t *)c->pin + c->pin_bytes;
}

#define LOGIT_SLICES 4           /* vocabulary slices whose copies overlap the next slice's product */
#define LOGIT_SLICE_MIN 16       /* rows from which slicing pays for its extra launches */

/* Final norm and lm_head for plan output rows [r0, r0 + n). When host is the page-locked
 * buffer, many rows are asked for and slicing is on, the vocabulary goes in slices
 * and each slice's rows are copied to host + r0*V on copy_st while the
 * next slice is computed (the transfer of 64 x 151552 floats takes as long as the
 * lm_head read twice); *copied says so. */
static int logits_chunk(glm_backend *be, const float *x, int r0, int n, float *host, int *copied) {
    cu_impl *c = IMPL(be);
    const glm_model *m = be->model;
    const int D = m->hp.n_embd, V = m->hp.n_vocab;
    *copied = 0;
    RUN(glm_cu_rmsnorm(x, P_OUT(c) + r0, m->out_norm.dev, c->fnorm, n, D, m->hp.rms_eps, c->st));
    const glm_cu_mat lm = mat_of(&m->lm_head);
    if (c->comm) {
        /* tensor parallel: this rank's vocabulary rows [n, Vr] padded to Vmax, gathered from
         * every rank [N, n, Vmax] and laid side by side in rank order [n, V] */
        const int N = glm_comm_size(c->comm), Vmax = (V + N - 1) / N;
        RUN(lin(c, &lm, NULL, c->fnorm, D, c->tp_send, Vmax, n));
        RUN(glm_comm_all_gather(c->comm, c->tp_send, c->tp_recv, (size_t)n * Vmax, GLM_COMM_F32, c->st));
        for (int q = 0; q < N; q++) {
            const int64_t v0 = glm_tp_part(V, q, N), v1 = glm_tp_part(V, q + 1, N);
            if (v1 > v0)
                CK(cudaMemcpy2DAsync(c->logits_d + v0, (size_t)V * 4, c->tp_recv + (size_t)q * n * Vmax, (size_t)Vmax * 4,
                                     (size_t)(v1 - v0) * 4, (size_t)n, cudaMemcpyDeviceToDevice, c->st));
        }
        return GLM_OK;
    }
    if (!host || !pinned_dst(c, host) || !c->logit_slices || n < LOGIT_SLICE_MIN || V < 128 * LOGIT_SLICES)
        return lin(c, &lm, NULL, c->fnorm, D, c->logits_d, V, n);
    const int per = (V / 128 + LOGIT_SLICES - 1) / LOGIT_SLICES * 128;  /* 128-row multiples: block scales stay whole */
    const size_t row_bytes = (size_t)lm.K * dt_size(lm.dtype);
    float *dst = host + (size_t)r0 * V;
    for (int v0 = 0; v0 < V; v0 += per) {
        const int nv = V - v0 < per ? V - v0 : per;
        glm_cu_mat sl = lm;
        sl.data = (const uint8_t *)lm.data + (size_t)v0 * row_bytes;
        sl.N = nv;
        if (lm.scale) sl.scale = lm.scale + (lm.scale_kind == GLM_CU_SCALE_BLOCK ? (size_t)(v0 / 128) * lm.s_ld : (size_t)v0);
        RUN(lin(c, &sl, NULL, c->fnorm, D, c->logits_d + v0, V, n));
        CK(cudaEventRecord(c->ev_slice, c->st));
        CK(cudaStreamWaitEvent(c->copy_st, c->ev_slice, 0));
        CK(cudaMemcpy2DAsync(dst + v0, (size_t)V * 4, c->logits_d + v0, (size_t)V * 4, (size_t)nv * 4, n,
                             cudaMemcpyDeviceToHost, c->copy_st));
    }
    CK(cudaEventRecord(c->ev_copied, c->copy_st));
    CK(cudaStreamWaitEvent(c->st, c->ev_copied, 0));
    *copied = 1;
    return GLM_OK;
}

/* Rows [r0, r0 + n) of the logits from the device: straight into the context's buffer
 * when it is the page-locked one we gave out, else through the staging buffer
 * (finished by logits_done after the stream is synchronised). */
static int logits_copy(cu_impl *c, float *host, int r0, int n, int V) {
    if (!n || !host) return GLM_OK;
    float *dst = pinned_dst(c, host) ? host + (size_t)r0 * V : c->logits_h;
    CK(cudaMemcpyAsync(dst, c->logits_d, (size_t)n * V * 4, cudaMemcpyDeviceToHost, c->st));
    return GLM_OK;
}

static void logits_done(cu_impl *c, float *host, int r0, int n, int V) {
    if (n && host && !pinned_dst(c, host)) memcpy(host + (size_t)r0 * V, c->logits_h, (size_t)n * V * 4);
}

/* Rows [r0, r0 + n) of the logits are queued on the stream (copied is set when the
 * slices already copy them to logits_host): copies them unless so, waits, and
 * finishes them on the host. Profiling (eager passes only) closes its last op here. */
static int logits_finish(cu_impl *c, float *logits_host, int r0, int n, int V, int copied) {
    if (!copied) RUN(logits_copy(c, logits_host, r0, n, V));
    prof_op(c, "(end)");
    RUN(stream_wait(c));
    if (c->rd_host) {  /* the pass's deferred read (cu_read) */
        memcpy(c->rd_host, c->rd_pin, c->rd_n * sizeof(float));
        c->rd_host = NULL;
    }
    prof_collect(c);
    if (!copied) logits_done(c, logits_host, r0, n, V);
    return GLM_OK;
}

static int cu_logits_run(glm_backend *be, const float *x, float *logits_host) {
    cu_impl *c = IMPL(be);
    const int V = be->model->hp.n_vocab, n_out = c->n_out;
    op_skip(c, 9, x, logits_host ? (const void *)1 : NULL, NULL, n_out);
    if (c->mode != MODE_REPLAY) {
        int rc = flush(c);
        if (rc) { capture_abort(c); return rc; }
    }
    if (c->mode == MODE_REPLAY) {
        if (c->hash != c->cur->hash) {
            c->mode = MODE_EAGER;
            return glm_err(GLM_ERR_ARG, "CUDA graph for %d tokens was captured from a different op sequence", c->T);
        }
        const int copied = c->cur->host_dst && c->cur->host_dst == logits_host;  /* by the graph itself */
        CK(cudaGraphLaunch(c->cur->exec, c->st));
        return logits_finish(c, logits_host, 0, n_out, V, copied);
    }
    if (c->mode == MODE_CAPTURE) {
        int copied = 0;
        int rc = n_out ? logits_chunk(be, x, 0, n_out, logits_host, &copied) : GLM_OK;
        cudaGraph_t graph = NULL;
        cudaError_t e = cudaStreamEndCapture(c->st, &graph);
        c->mode = MODE_EAGER;
        if (rc) { if (graph) cudaGraphDestroy(graph); return rc; }
        if (e != cudaSuccess) { cudaGetLastError(); return glm_err(GLM_ERR_CUDA, "graph capture failed: %s", cudaGetErrorString(e)); }
        cu_graph *g = &c->graphs[c->n_graphs];
        e = cudaGraphInstantiate(&g->exec, graph, 0);
        cudaGraphDestroy(graph);
        if (e != cudaSuccess) return glm_err(GLM_ERR_CUDA, "graph instantiate failed: %s", cudaGetErrorString(e));
        g->T = c->T; g->n_out = n_out; g->n_seq_slots = c->n_seq_slots; g->max_pages = c->max_pages;
        g->hidden = c->rd_host != NULL;
        g->hash = c->hash;
        g->host_dst = copied ? logits_host : NULL;
        c->n_graphs++;
        CK(cudaGraphLaunch(g->exec, c->st));
        return logits_finish(c, logits_host, 0, n_out, V, copied);
    }
    for (int r0 = 0; r0 < n_out; r0 += c->logit_chunk) {
        const int n = n_out - r0 < c->logit_chunk ? n_out - r0 : c->logit_chunk;
        prof_op(c, "logits");
        int copied = 0;
        RUN(logits_chunk(be, x, r0, n, logits_host, &copied));
        RUN(logits_finish(c, logits_host, r0, n, V, copied));
    }
    return n_out ? GLM_OK : logits_finish(c, logits_host, 0, 0, V, 1);
}

/* The pass's output rows stay in logits_d for sample() when they fit in one chunk. */
static int cu_logits(glm_backend *be, const float *x, float *logits_host) {
    cu_impl *c = IMPL(be);
    c->samp_n = 0;
    const int rc = cu_logits_run(be, x, logits_host);
    if (!rc) c->samp_n = c->n_out <= c->logit_chunk ? c->n_out : 0;
    return rc;
}

/* Grows the sampling buffers to n rows and nh history tokens. */
static int samp_reserve(cu_impl *c, int n, size_t nh) {
    if (n > c->samp_cap) {
        const int cap = n > 2 * c->samp_cap ? n : 2 * c->samp_cap;
        free(c->samp_row_h);
        cudaFree(c->samp_row_d);
        cudaFree(c->samp_ids_d);
        c->samp_row_d = NULL;
        c->samp_ids_d = NULL;
        c->samp_cap = 0;
        c->samp_row_h = malloc((size_t)cap * sizeof *c->samp_row_h);
        if (!c->samp_row_h) return glm_err(GLM_ERR_OOM, "out of memory");
        RUN(dev_alloc((void **)&c->samp_row_d, (size_t)cap * sizeof *c->samp_row_d, "sampling rows"));
        RUN(dev_alloc((void **)&c->samp_ids_d, (size_t)cap * sizeof *c->samp_ids_d, "sampled ids"));
        c->samp_cap = cap;
    }
    if (nh > c->samp_hist_cap) {
        const size_t cap = nh > 2 * c->samp_hist_cap ? nh : 2 * c->samp_hist_cap;
        free(c->samp_hist_h);
        cudaFree(c->samp_hist_d);
        c->samp_hist_d = NULL;
        c->samp_hist_cap = 0;
        c->samp_hist_h = malloc(cap * sizeof *c->samp_hist_h);
        if (!c->samp_hist_h) return glm_err(GLM_ERR_OOM, "out of memory");
        RUN(dev_alloc((void **)&c->samp_hist_d, cap * sizeof *c->samp_hist_d, "sampling history"));
        c->samp_hist_cap = cap;
    }
    return GLM_OK;
}

/* The penalty window of a history under p (lib/sampler.c): empty when no penalty is on. */
static int samp_window(const glm_sampler_params *p, const int32_t *h, int n, int *h0) {
    *h0 = 0;
    if (!h || n <= 0 || (p->repeat_penalty == 1.0f && p->presence_penalty == 0 && p->frequency_penalty == 0)) return 0;
    *h0 = p->repeat_last_n < 0 || p->repeat_last_n > n ? 0 : n - p->repeat_last_n;
    return n - *h0;
}

static int cu_sample(glm_backend *be, int n, const int32_t *out_idx, const glm_sampler_params *params,
                     const uint64_t *steps, const int32_t *const *hist, const int *n_hist, int32_t *ids) {
    cu_impl *c = IMPL(be);
    const int V = be->model->hp.n_vocab;
    /* after logits() the pass has run: eager, or a replayed graph (the mode stays until begin) */
    if (c->mode == MODE_CAPTURE) return glm_err(GLM_ERR_NOT_IMPLEMENTED, "sampling inside a graph-captured CUDA pass");
    for (int i = 0; i < n; i++)
        if (out_idx[i] < 0 || out_idx[i] >= c->samp_n)
            return glm_err(GLM_ERR_NOT_IMPLEMENTED, "output row %d of the last pass is not on the device (%d rows are)",
                           out_idx[i], c->samp_n);
    if (n <= 0) return GLM_OK;
    size_t nh = 0;
    for (int i = 0; i < n; i++) {
        int h0;
        nh += (size_t)samp_window(&params[i], hist ? hist[i] : NULL, n_hist ? n_hist[i] : 0, &h0);
    }
    if (nh > INT32_MAX) return glm_err(GLM_ERR_ARG, "%zu history tokens to sample with", nh);
    CK(cudaSetDevice(c->gpu));
    RUN(samp_reserve(c, n, nh));
    int off = 0;
    for (int i = 0; i < n; i++) {
        const glm_sampler_params *p = &params[i];
        int h0;
        const int w = samp_window(p, hist ? hist[i] : NULL, n_hist ? n_hist[i] : 0, &h0);
        if (w) memcpy(c->samp_hist_h + off, hist[i] + h0, (size_t)w * sizeof(int32_t));
        glm_cu_sample_row *r = &c->samp_row_h[i];
        memset(r, 0, sizeof *r);
        r->logit_off = (long long)out_idx[i] * V;
        r->temp = p->temp;
        r->top_k = p->top_k;
        r->top_p = p->top_p;
        r->min_p = p->min_p;
        r->repeat_penalty = p->repeat_penalty;
        r->presence_penalty = p->presence_penalty;
        r->frequency_penalty = p->frequency_penalty;
        r->hist_off = off;
        r->n_hist = w;
        r->seed = p->seed;
        r->step = steps ? steps[i] : 0;
        off += w;
    }
    if (c->mode == MODE_EAGER) RUN(flush(c));
    CK(cudaMemcpyAsync(c->samp_row_d, c->samp_row_h, (size_t)n * sizeof *c->samp_row_h, cudaMemcpyHostToDevice, c->st));
    if (off) CK(cudaMemcpyAsync(c->samp_hist_d, c->samp_hist_h, (size_t)off * sizeof(int32_t), cudaMemcpyHostToDevice, c->st));
    c->samp_n = 0;  /* the penalties change the rows: sampled once */
    RUN(glm_cu_sample(c->logits_d, c->samp_row_d, n, c->samp_hist_d, V, c->samp_ids_d, c->st));
    CK(cudaMemcpyAsync(ids, c->samp_ids_d, (size_t)n * sizeof(int32_t), cudaMemcpyDeviceToHost, c->st));
    return stream_wait(c);
}

/* Page-locked host memory for the context's logits (plain memory if that fails). */
static void *cu_host_alloc(glm_backend *be, size_t bytes) {
    cu_impl *c = IMPL(be);
    void *p = NULL;
    if (!c->pin && cudaMallocHost(&p, bytes) == cudaSuccess) {
        c->pin = p;
        c->pin_bytes = bytes;
        return p;
    }
    cudaGetLastError();
    return malloc(bytes);
}

static void cu_host_free(glm_backend *be, void *p) {
    cu_impl *c = IMPL(be);
    if (p && p == c->pin) {
        if (c->st) cudaStreamSynchronize(c->st);
        graphs_clear(c);  /* graphs may copy logits into it */
        cudaFreeHost(p);
        c->pin = NULL;
        c->pin_bytes = 0;
    } else {
        free(p);
    }
}

static void cu_destroy(glm_backend *be) {
    if (!be) return;
    cu_impl *c = IMPL(be);
    if (c) {
        cudaSetDevice(c->gpu);
        capture_abort(c);
        if (c->st) cudaStreamSynchronize(c->st);
        graphs_clear(c);
        for (int i = 0; i < c->cap_ev; i++) cudaEventDestroy(c->ev[i]);
        free(c->ev);
        free(c->ev_label);
        glm_cu_lt_free(c->lt);
        for (int i = 0; i < CU_MAX_AUX; i++) {
            if (c->aux[i]) cudaStreamSynchronize(c->aux[i]);
            glm_cu_lt_free(c->aux_lt[i]);
            if (c->aux_ws[i]) cudaFree(c->aux_ws[i]);
            if (c->aux[i]) cudaStreamDestroy(c->aux[i]);
            if (c->ev_join[i]) cudaEventDestroy(c->ev_join[i]);
        }
        if (c->ev_fork) cudaEventDestroy(c->ev_fork);
        if (c->copy_st) { cudaStreamSynchronize(c->copy_st); cudaStreamDestroy(c->copy_st); }
        if (c->ev_slice) cudaEventDestroy(c->ev_slice);
        if (c->ev_copied) cudaEventDestroy(c->ev_copied);
        for (int i = 0; i < c->n_allocs; i++) cudaFree(c->allocs[i]);
        free(c->allocs);
        void *dv[] = {c->arena, c->lt_ws, c->lt_y, c->kv_mem, c->d_plan, c->xq, c->xs, c->gtmp, c->rlog, c->mid, c->eo,
                      c->g_off, c->g_off4, c->g_active, c->g_nact, c->g_rows, c->g_slot, c->g_ids, c->g_tiles, c->att_ws, c->part, c->fnorm,
                      c->logits_d,
                      c->tp_send, c->tp_recv};
        for (size_t i = 0; i < sizeof dv / sizeof dv[0]; i++) if (dv[i]) cudaFree(dv[i]);
        if (c->h_plan) cudaFreeHost(c->h_plan);
        if (c->h_off) cudaFreeHost(c->h_off);
        if (c->logits_h) cudaFreeHost(c->logits_h);
        if (c->rd_pin) cudaFreeHost(c->rd_pin);
        if (c->samp_row_d) cudaFree(c->samp_row_d);
        if (c->samp_ids_d) cudaFree(c->samp_ids_d);
        if (c->samp_hist_d) cudaFree(c->samp_hist_d);
        free(c->samp_row_h);
        free(c->samp_hist_h);
        if (c->pin) cudaFreeHost(c->pin);
        if (c->st) cudaStreamDestroy(c->st);
        cudaGetLastError();
        if (c->arena && be->model) clear_model_dev(be->model);
        free(c->moe);
        free(c->kv);
        free(c);
    }
    free(be);
}

static const glm_backend_ops cuda_ops = {
    .name = "cuda",
    .load = cu_load,
    .kv_pages_fit = cu_kv_pages_fit,
    .kv_init = cu_kv_init,
    .reserve = cu_reserve,
    .alloc = cu_alloc,
    .begin = cu_begin,
    .embed = cu_embed,
    .rmsnorm = cu_rmsnorm,
    .linear = cu_linear,
    .glu = cu_glu,
    .attention = cu_attention,
    .moe_route = cu_moe_route,
    .moe_experts = cu_moe_experts,
    .add = cu_add,
    .all_reduce = cu_all_reduce,
    .logits = cu_logits,
    .sample = cu_sample,
    .read = cu_read,
    .write = cu_write,
    .host_alloc = cu_host_alloc,
    .host_free = cu_host_free,
    .destroy = cu_destroy,
};

static int env_int(const char *name, int def) {
    const char *s = getenv(name);
    return s && *s ? atoi(s) : def;
}

int glm_backend_cuda_new(glm_model *model, const glm_ctx_params *p, glm_backend **out) {
    *out = NULL;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        cudaGetLastError();
        return glm_err(GLM_ERR_CUDA, "no CUDA device: %s", e != cudaSuccess ? cudaGetErrorString(e) : "none found");
    }
    if (p->gpu < 0 || p->gpu >= n) return glm_err(GLM_ERR_ARG, "GPU %d requested, %d present", p->gpu, n);
    const glm_hparams *hp = &model->hp;
    if (hp->n_head_kv <= 0 || hp->n_head % hp->n_head_kv || hp->n_head / hp->n_head_kv > 16 || hp->head_dim > 256)
        return glm_err(GLM_ERR_UNSUPPORTED, "CUDA attention needs head_dim <= 256 and <= 16 query heads per KV head (%d/%d, %d)",
                       hp->n_head, hp->n_head_kv, hp->head_dim);
    glm_backend *be = calloc(1, sizeof *be);
    cu_impl *c = calloc(1, sizeof *c);
    if (!be || !c) { free(be); free(c); return glm_err(GLM_ERR_OOM, "out of memory"); }
    be->ops = &cuda_ops;
    be->model = model;
    be->params = *p;
    be->impl = c;
    c->gpu = p->gpu;
    c->use_graphs = env_int("GLM_CUDA_GRAPHS", 1);
    c->graph_max = env_int("GLM_CUDA_GRAPH_MAX", 64);
    /* a rank of 8 holds an eighth of each product: its 5-8 token products are too small for
     * cuBLASLt to fill the GPU and go faster on the tensor-core GEMV (run 18: rank 0 of 8,
     * batch 8, 2.53 -> 1.97 ms a step; batches 1 and 64 unchanged); one GPU keeps 4 */
    c->gemv_max = env_int("GLM_CUDA_GEMV_MAX", p->n_tp >= 8 ? 8 : 4);
    c->dense_mma_max = env_int("GLM_CUDA_DENSE_MMA", 8);
    c->mma_min = env_int("GLM_CUDA_MMA_MIN", 4);
    c->prof = env_int("GLM_CUDA_PROFILE", 0);
    c->fuse = env_int("GLM_CUDA_FUSE", 1);
    c->fa = env_int("GLM_CUDA_FA", 1);
    c->wgmma = env_int("GLM_CUDA_WGMMA", 1);
    c->wgmma_tok = env_int("GLM_CUDA_WGMMA_TOK", 1);
    c->gemv_flags = (env_int("GLM_CUDA_GEMV_MMA", 1) ? 0u : GLM_CU_GEMV_CUDA_CORES) |
                    (env_int("GLM_CUDA_GEMV_BULK", 1) ? 0u : GLM_CU_GEMV_NO_BULK);
    if (c->prof) c->use_graphs = 0;
    int rc = GLM_OK;
    struct cudaDeviceProp prop;
    if ((e = cudaSetDevice(c->gpu)) != cudaSuccess || (e = cudaGetDeviceProperties(&prop, c->gpu)) != cudaSuccess ||
        (e = cudaStreamCreateWithFlags(&c->st, cudaStreamNonBlocking)) != cudaSuccess) {
        rc = glm_err(GLM_ERR_CUDA, "CUDA setup on GPU %d failed: %s", c->gpu, cudaGetErrorString(e));
        goto fail;
    }
    c->n_sm = prop.multiProcessorCount;
    if ((rc = dev_alloc(&c->lt_ws, CU_LT_WS, "the cuBLASLt workspace"))) goto fail;
    c->n_aux = env_int("GLM_CUDA_MOE_STREAMS", 4);
    if (c->n_aux < 0) c->n_aux = 0;
    if (c->n_aux > CU_MAX_AUX) c->n_aux = CU_MAX_AUX;
    if (c->n_aux && (e = cudaEventCreateWithFlags(&c->ev_fork, cudaEventDisableTiming)) != cudaSuccess) {
        rc = glm_err(GLM_ERR_CUDA, "CUDA event: %s", cudaGetErrorString(e));
        goto fail;
    }
    for (int i = 0; i < c->n_aux; i++) {
        if ((e = cudaStreamCreateWithFlags(&c->aux[i], cudaStreamNonBlocking)) != cudaSuccess ||
            (e = cudaEventCreateWithFlags(&c->ev_join[i], cudaEventDisableTiming)) != cudaSuccess) {
            rc = glm_err(GLM_ERR_CUDA, "CUDA side stream %d: %s", i, cudaGetErrorString(e));
            goto fail;
        }
        if ((rc = dev_alloc(&c->aux_ws[i], CU_AUX_WS, "a side-stream cuBLASLt workspace"))) goto fail;
        if ((rc = glm_cu_lt_new(&c->aux_lt[i], c->aux_ws[i], CU_AUX_WS, NULL, 0))) goto fail;
    }
    c->logit_slices = env_int("GLM_CUDA_LOGIT_SLICES", 1);
    if (c->logit_slices && ((e = cudaStreamCreateWithFlags(&c->copy_st, cudaStreamNonBlocking)) != cudaSuccess ||
                            (e = cudaEventCreateWithFlags(&c->ev_slice, cudaEventDisableTiming)) != cudaSuccess ||
                            (e = cudaEventCreateWithFlags(&c->ev_copied, cudaEventDisableTiming)) != cudaSuccess)) {
        rc = glm_err(GLM_ERR_CUDA, "CUDA logits copy stream: %s", cudaGetErrorString(e));
        goto fail;
    }
    if ((rc = cu_load(be, model))) goto fail;
    *out = be;
    return GLM_OK;
fail:
    cu_destroy(be);
    return rc;
}
