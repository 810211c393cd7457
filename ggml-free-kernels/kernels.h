/* kernels.h - the plain C face of the CUDA kernels in ggml-free-kernels/ (*.cu).
 *
 * The host glue (lib/backend-cuda.c), the GPU tests and glm-bench call only what is
 * declared here: every launcher is extern "C", takes device pointers and a stream,
 * enqueues work, checks the launch, and returns GLM_OK or GLM_ERR_CUDA with
 * glm_last_error() naming file:line. Device code lives in *_kernel functions.
 *
 * Activations are float32 row-major [rows, cols] unless a launcher says otherwise.
 * A weight is described by glm_cu_mat: data [N, K] row-major in one of three element
 * types, with per-row ("channel") or 128x128 ("block") float32 scales for FP8. */
#ifndef GLM_KERNELS_H
#define GLM_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* From lib/util.c: sets the thread's error message and returns status. */
int glm_err(int status, const char *fmt, ...);

#define GLM_CU_ERR_CUDA (-6)  /* == GLM_ERR_CUDA */

/* Checks a CUDA runtime call; on failure returns GLM_ERR_CUDA with file:line. */
#define CUDA_CHECK(call)                                                              \
    do {                                                                              \
        cudaError_t e_ = (call);                                                      \
        if (e_ != cudaSuccess)                                                        \
            return glm_err(GLM_CU_ERR_CUDA, "%s:%d: %s failed: %s", __FILE__,         \
                           __LINE__, #call, cudaGetErrorString(e_));                  \
    } while (0)

/* Checks the last kernel launch. */
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

/* ---- weights ---- */
enum { GLM_CU_F32 = 0, GLM_CU_BF16 = 1, GLM_CU_FP8 = 2 };        /* element type */
enum { GLM_CU_SCALE_NONE = 0, GLM_CU_SCALE_CHANNEL = 1, GLM_CU_SCALE_BLOCK = 2 };

/* Row stride of a block-scale grid for a weight of cols columns: ceil(cols/128)
 * rounded up to 4 floats, the layout cuBLASLt's BLK128x128 mode reads. */
static inline int glm_cu_block_ld(int64_t cols) { return (int)(((cols + 127) / 128 + 3) / 4 * 4); }

typedef struct {
    const void *data;        /* [N, K] elements of dtype; expert e at data + e*stride bytes */
    const float *scale;      /* CHANNEL: [N]; BLOCK: [ceil(N/128), s_ld]; NULL for NONE */
    long long stride;        /* bytes between consecutive experts (grouped launches) */
    long long s_stride;      /* floats between consecutive experts' scales */
    int dtype, scale_kind;
    int N, K;
    int s_ld;                /* BLOCK: floats per scale row (glm_cu_block_ld(K)) */
} glm_cu_mat;

/* Expert groups for the MoE launchers, all in device memory, produced by glm_cu_moe_group.
 * Position p in [off[e], off[e+1]) of the sorted order holds one (token, slot) pair of
 * expert e; rows[p] is its token. */
typedef struct {
    const int32_t *active;   /* [n_expert] ids of experts with tokens, ascending */
    const int32_t *n_active; /* scalar */
    const int32_t *off;      /* [n_expert + 1] */
    const int32_t *rows;     /* [T*k] token of each sorted position */
    int max_groups;          /* upper bound of *n_active: the launch grid */
    int max_count;           /* upper bound of one expert's rows (template choice) */
} glm_cu_groups;

/* ---- elementwise ---- */
/* x[t, :] = float(emb[tokens[t], :]) for t < T; emb is F32 or BF16 [n_vocab, D]. */
int glm_cu_embed(const void *emb, int emb_dtype, const int32_t *tokens, int T, int D,
                 int n_vocab, float *x, cudaStream_t st);
/* out[r, :] = x[i, :] / rms(x[i, :]) * w for r < R, i = row_idx ? row_idx[r] : r. */
int glm_cu_rmsnorm(const float *x, const int32_t *row_idx, const float *w, float *out,
                   int R, int D, float eps, cudaStream_t st);
/* x[r, :] += y[r, :]; out[r, :] = x[r, :] / rms(x[r, :]) * w, for r < R (residual add
 * fused with the next RMSNorm). */
int glm_cu_add_rmsnorm(float *x, const float *y, const float *w, float *out, int R, int D, float eps,
                       cudaStream_t st);
/* x[i] += y[i] */
int glm_cu_add(float *x, const float *y, size_t n, cudaStream_t st);
/* y[t, n] += bias[n] */
int glm_cu_add_bias(float *y, const float *bias, int T, int N, int ldy, cudaStream_t st);
/* y[t, n] = silu(g[t, n]) * u[t, n], g at gu + t*ld, u at gu + t*ld + N */
int glm_cu_swiglu(const float *gu, int ld, float *y, int ldy, int T, int N, cudaStream_t st);
/* Fills a device weight with reproducible random values: FP8 codes in [-448, 448]
 * (no NaN codes), BF16/F32 uniform in [-amp, amp]. */
int glm_cu_fill_random(void *data, int dtype, size_t n, float amp, uint64_t seed, cudaStream_t st);
/* Fills n floats uniform in [lo, hi]. */
int glm_cu_fill_uniform(float *data, size_t n, float lo, float hi, uint64_t seed, cudaStream_t st);
/* out[i] = float(in[i]) for a BF16 or F16 array (dtype GLM_CU_BF16 or 3 = F16). */
int glm_cu_to_f32(const void *in, int dtype, float *out, size_t n, cudaStream_t st);

/* Per-token dynamic FP8 quantisation of x[T, K] (rows gathered through row_idx when
 * non-NULL). Channel (block128 = 0): s[t] = amax(x[t])/448, q = x/s. Block (block128 = 1):
 * one scale per (t, 128-column block) stored at s[kb*ld_s + t], ld_s = T rounded up to 4
 * (cuBLASLt's layout); block128 = 2: the same scales row-major, s[t*ceil(K/128) + kb]
 * (glm_cu_gemm_fp8_mma's layout). */
int glm_cu_quant_fp8(const float *x, int ldx, const int32_t *row_idx, int T, int K, int block128,
                     uint8_t *q, float *s, int ld_s, cudaStream_t st);
/* glm_cu_quant_fp8 of the SwiGLU rows silu(gu[t, n]) * gu[t, N + n], n < N, of BF16 gu
 * (glm_cu_gemm_fp8_wgmma's output), without writing them (N % 128 == 0, ld % 4 == 0). */
int glm_cu_swiglu_quant_fp8(const uint16_t *gu, int ld, int T, int N, int block128, uint8_t *q, float *s, int ld_s,
                            cudaStream_t st);
/* dst[t, n] = float(src[t, n]) for a BF16 matrix with row strides lds, ldd. */
int glm_cu_bf16_to_f32_2d(const uint16_t *src, int lds, float *dst, int ldd, int T, int N, cudaStream_t st);
/* q[t, :] = bf16(x[t, :]) */
int glm_cu_to_bf16(const float *x, int ldx, const int32_t *row_idx, int T, int K, uint16_t *q,
                   cudaStream_t st);

/* ---- GEMV / GEMM ---- */
/* Skinny product for few tokens, weights streamed once per token chunk of up to 8:
 *   y[t, n] = sum_k W[n, k] x[t, k] (+ bias[n])             (up == NULL)
 *   y[t, n] = silu(Wg[n]·x[t]) * (Wu[n]·x[t])                (up != NULL, glu)
 * Dense (g == NULL): t < T, x row t at x + t*ldx, y row t at y + t*ldy.
 * Grouped (g != NULL): block y is one active expert e; its rows are the positions
 * p in [off[e], off[e+1]); x row = x_gather ? rows[p] : p, y row = p.
 * FP8 weights of 2+ tokens run on the tensor cores (mma.sync m16n8k16, weights
 * widened to f16 exactly, x rounded to f16 saturating at +-65504, float32
 * accumulation, 8 tokens a pass); one token, and BF16 and F32 weights, on the CUDA
 * cores in float32 (one token of FP8 weights from a shared-memory ring filled by bulk
 * copies, on sm_90). flags: GLM_CU_GEMV_* below. */
#define GLM_CU_GEMV_CUDA_CORES 1u  /* FP8 weights of 2+ tokens on the float32 CUDA-core loop too */
#define GLM_CU_GEMV_NO_BULK 2u     /* one token of FP8 weights on the register loop, not the bulk-copy ring */
int glm_cu_gemv(const glm_cu_mat *w, const glm_cu_mat *up, const float *x, int ldx,
                const float *bias, float *y, int ldy, int T, const glm_cu_groups *g,
                int x_gather, unsigned flags, cudaStream_t st);
/* Up to 4 dense GEMVs over the same x in one launch (q, k and v): weights of one type
 * and width; y_i[t, n] = x[t] . W_i[n] (+ bias_i[n]) with row stride ldy[i]. */
int glm_cu_gemv_multi(const glm_cu_mat *ws, const float *const *bias, float *const *ys, const int *ldy,
                      int n, const float *x, int ldx, int T, unsigned flags, cudaStream_t st);
/* The same function by a tiled float32 kernel for any T (the fallback for shapes the
 * tensor-core path does not take), dense or grouped like glm_cu_gemv (no glu). */
int glm_cu_gemm_tiled(const glm_cu_mat *w, const float *x, int ldx, const float *bias, float *y,
                      int ldy, int T, const glm_cu_groups *g, int x_gather, cudaStream_t st);

/* FP8 tensor-core product (mma.sync m16n8k32) for the MoE experts, grouped like
 * glm_cu_gemv (glu with up != NULL): xq [rows][K] e4m3 and xs [rows][K/128] from
 * glm_cu_quant_fp8(..., block128 = 2, ...). Needs FP8 weights with K % 128 == 0 and
 * N % 16 == 0 (glm_cu_mma_ok). */
int glm_cu_mma_ok(const glm_cu_mat *w);
int glm_cu_gemm_fp8_mma(const glm_cu_mat *w, const glm_cu_mat *up, const uint8_t *xq, const float *xs,
                        float *y, int ldy, int T, const glm_cu_groups *g, int x_gather, cudaStream_t st);
/* The dense product y[t, n] = W[n]·x[t] (+ bias[n]) of T tokens (up to graph sizes) on
 * the same kernel with the 128-column blocks split over n_split blocks of each 64-row
 * tile (more blocks for weights of few rows), partial sums in part [n_split][T][N]
 * floats added up in split order. n_split from glm_cu_mma_splits (1 <= n_split <= K/128;
 * part may be NULL with 1). */
int glm_cu_mma_splits(const glm_cu_mat *w, int T, int n_sm, size_t part_floats);
int glm_cu_gemm_fp8_mma_splitk(const glm_cu_mat *w, const uint8_t *xq, const float *xs, const float *bias,
                               float *y, int ldy, int T, int n_split, float *part, cudaStream_t st);

/* Grouped FP8 GEMM on Hopper's warpgroup tensor cores (moe-wgmma.cu), for prefill:
 *   y[p, n] = bf16(sum_k W_e[n, k] x[p, k]), p < R sorted positions,
 * xq [R][K] e4m3 and, with act_block = 1, xs [K/128][ld_s] from glm_cu_quant_fp8(...,
 * block128 = 1, ld_s); with act_block = 0 (per-channel weight scales only) one scale a
 * position, xs[p] (block128 = 0), on a kernel with 256-row tiles.
 * Grouped (tiles != NULL, from glm_cu_wgmma_tiles in glm_cu_wgmma_tiles_ints(R, n_expert)
 * int32s): positions [off[e], off[e+1]) use expert e. Dense (tiles == NULL): W itself
 * for all R positions. Needs an sm_90 device, FP8 weights with
 * K % 128 == 0 and N % 128 == 0 (glm_cu_wgmma_ok). */
int glm_cu_wgmma_ok(const glm_cu_mat *w);
size_t glm_cu_wgmma_tiles_ints(int R, int n_expert);
/* The tile list of the groups off[0..n_expert] (runs of up to 128 positions an expert),
 * built on the device; both products of a MoE layer read the same list. */
int glm_cu_wgmma_tiles(const int32_t *off, int n_expert, int32_t *tiles, cudaStream_t st);
int glm_cu_gemm_fp8_wgmma(const glm_cu_mat *w, const uint8_t *xq, const float *xs, int ld_s, uint16_t *y, int ldy,
                          int R, int n_expert, const int32_t *tiles, int act_block, cudaStream_t st);

/* cuBLASLt products (ggml-free-kernels/gemm-lt.cu). A context caches heuristics. */
typedef struct glm_cu_lt glm_cu_lt;
/* ybuf: device scratch for outputs cuBLASLt can only write in BF16 (the scaled FP8
 * modes): T*N*2 bytes for the largest product; they are widened to float32 after. */
int glm_cu_lt_new(glm_cu_lt **out, void *workspace, size_t ws_bytes, void *ybuf, size_t ybuf_bytes);
void glm_cu_lt_free(glm_cu_lt *lt);
/* y[T, N] (fp32, row stride ldy) = X[T, K] · W[N, K]^T on tensor cores.
 * FP8 weights: xq [T, K] e4m3 from glm_cu_quant_fp8 with its scales xs (channel: [T];
 * block: [ceil(K/128), ld_s]). BF16 weights: xq holds bf16 [T, K], xs unused. F32
 * weights: xq is the float32 activations [T, K] themselves (full fp32 compute).
 * Returns GLM_ERR_UNSUPPORTED (-7) when cuBLASLt has no algorithm for the case. */
int glm_cu_lt_matmul(glm_cu_lt *lt, const glm_cu_mat *w, int expert, const void *xq,
                     const float *xs, int ld_s, int T, float *y, int ldy, cudaStream_t st);
/* Which route cuBLASLt takes for this shape once used (0 native scales to float32,
 * 1 native scales to BF16, 2 unscaled FP8 + our outer-scale epilogue), -1 none yet. */
int glm_cu_lt_variant(glm_cu_lt *lt, const glm_cu_mat *w, int T, int ldy);
/* Whether a weight's shape suits the cuBLASLt path (alignment, block multiples). */
int glm_cu_lt_shape_ok(const glm_cu_mat *w);

/* ---- attention ---- */
typedef struct {
    void *k, *v;             /* layer's pages: [n_pages][n_kv][16][hd] of bf16 or fp8 */
    float *ks, *vs;          /* FP8 only: [n_pages][n_kv][16] scales, else NULL */
    int fp8;
} glm_cu_kv;

typedef struct {
    const int32_t *pos, *seq, *page_table;
    int max_pages;
} glm_cu_plan;

/* The projections' biases bq[n_head*hd], bk, bv[n_kv*hd] added where not NULL (and
 * written back), q/k RMSNorm per head (q_norm/k_norm may be NULL), partial NeoX RoPE
 * on the first n_rot dims, and k, v stored into the pages. q[T, n_head*hd],
 * k,v[T, n_kv*hd]. */
int glm_cu_rope_store(float *q, float *k, float *v, const float *bq, const float *bk, const float *bv, int T,
                      int n_head, int n_kv, int hd, int n_rot, float theta, const float *q_norm,
                      const float *k_norm, float eps, const glm_cu_plan *p, const glm_cu_kv *kv, cudaStream_t st);
/* Causal GQA over each token's sequence pages: out[T, n_head*hd]. n_split > 1 splits
 * the context (flash-decoding) through ws, which holds T*n_head*n_split*(hd+2) floats. */
/* 1 when glm_cu_attention runs its tensor-core decode kernel for this shape and page
 * type (BF16 pages, head_dim 32/64/128, up to 16 query heads a KV head, and
 * GLM_CUDA_ATT_MMA not 0), else 0 (the CUDA-core kernel). */
int glm_cu_attention_mma(int n_head, int n_kv, int hd, int fp8);
int glm_cu_attention(const float *q, float *out, int T, int n_head, int n_kv, int hd,
                     const glm_cu_plan *p, const glm_cu_kv *kv, int n_split, float *ws,
                     cudaStream_t st);

/* Prefill attention on tensor cores (BF16 mma, FP32 softmax and accumulators) for
 * head_dim 32, 64 or 128: the same function as glm_cu_attention, for tiles of plan rows.
 * glm_cu_attention_tiles cuts T plan rows into runs of one sequence of at most 64 rows:
 * start[0..n] (n + 1 entries, start[n] = T), returns n. */
int glm_cu_attention_tiles(const int32_t *seq, int T, int32_t *start);
int glm_cu_attention_prefill_ok(int n_head, int n_kv, int hd);
int glm_cu_attention_prefill(const float *q, float *out, int n_head, int n_kv, int hd, const glm_cu_plan *p,
                             const glm_cu_kv *kv, const int32_t *tiles, int n_tiles, cudaStream_t st);

/* ---- MoE ---- */
/* Router: scores = sigmoid(logits[T, n_expert]); top-k by scores + bias; weights =
 * chosen scores, normalised when norm != 0, times scale. ids[T, k], w[T, k]. */
int glm_cu_moe_topk(const float *logits, const float *bias, int T, int n_expert, int k, int norm,
                    float scale, int32_t *ids, float *w, cudaStream_t st);
/* Sorts the T*k (token, slot) pairs by expert: fills off, active, n_active, rows and
 * slot_of[t*k+j] = sorted position; off4 is the prefix sum of the counts rounded up
 * to 4 (the per-expert scale layout of glm_cu_quant_fp8_grouped). Deterministic.
 * shared = 1 appends expert n_expert (the shared expert) holding every token in order:
 * positions off[n_expert] + t, slot_of[T*k + t]; off has n_expert + 2 entries then. */
int glm_cu_moe_group(const int32_t *ids, int T, int k, int n_expert, int shared, int32_t *off,
                     int32_t *off4, int32_t *active, int32_t *n_active, int32_t *rows, int32_t *slot_of,
                     cudaStream_t st);
/* Expert parallelism: out[i] = ids[i] when lo <= ids[i] < hi (an expert this rank holds),
 * else -1. glm_cu_moe_group gives -1 no position (slot_of -1, leftover positions token 0)
 * and glm_cu_moe_combine skips it. */
int glm_cu_moe_own(const int32_t *ids, int n, int lo, int hi, int32_t *out, cudaStream_t st);
/* FP8 quantisation of R sorted rows (x row rows[p], or p when rows is NULL) into q[p, :]
 * with each expert's scales 16-byte aligned, as one cuBLASLt call per expert needs:
 * channel = 1: one scale per row at s[off4[e] + p - off[e]]; channel = 0: 1x128 block
 * scales, expert e's a [ceil(K/128)][off4[e+1]-off4[e]] tensor at s + ceil(K/128)*off4[e]. */
int glm_cu_quant_fp8_grouped(const float *x, int ldx, const int32_t *rows, const int32_t *off,
                             const int32_t *off4, int n_expert, int R, int K, int channel, uint8_t *q,
                             float *s, cudaStream_t st);
/* q[p, :] = q_tok[rows[p], :] and s[kb * ld_s + p] = s_tok[rows[p] * n_s + kb], kb < n_s,
 * for the R sorted positions p: tokens quantised once copied to their positions. n_s =
 * K/128 (glm_cu_quant_fp8 block128 = 2, to the layout of block128 = 1) or 1 (one scale a
 * token, block128 = 0). K a multiple of 128, rows 16-byte aligned. */
int glm_cu_gather_fp8(const uint8_t *q_tok, const float *s_tok, int n_s, const int32_t *rows, int R, int K,
                      uint8_t *q, float *s, int ld_s, cudaStream_t st);
/* out[t, :] = sum_j w[t, j] * eo[slot_of[t*k+j], :] (+ eo[slot_of[T*k+t], :] when shared);
 * eo float32, or BF16 when eo_bf16 (the wgmma route's output). */
int glm_cu_moe_combine(const void *eo, int eo_bf16, const int32_t *slot_of, const float *w, int T, int k, int D,
                       int shared, float *out, cudaStream_t st);

/* ---- sampling (sample.cu) ---- */
/* One row to sample: its logits at logits + logit_off, the host sampler's parameters
 * (lib/sampler.c; repeat_last_n already applied: the penalty window is hist[hist_off,
 * hist_off + n_hist)), and (seed, step) for the draw. */
typedef struct {
    long long logit_off;
    float temp, top_p, min_p, repeat_penalty, presence_penalty, frequency_penalty;
    int top_k;
    int hist_off, n_hist;
    uint64_t seed, step;
} glm_cu_sample_row;

/* ids[r] = the token sampled from row r of R (V logits each) by the host sampler's rules:
 * penalties over the window, then greedy (temp <= 0: the largest logit, the lowest id on
 * ties) or temperature, top-k, min-p, top-p and a draw from a uniform of (seed, step).
 * The penalties are applied to the logits in place, so the rows must be distinct. */
int glm_cu_sample(float *logits, const glm_cu_sample_row *rows, int R, const int32_t *hist, int V,
                  int32_t *ids, cudaStream_t st);

/* ---- profiling (lib/backend-cuda.c) ---- */
/* With GLM_CUDA_PROFILE=1 in the environment when a CUDA backend is created, graphs are
 * off and the GPU time of every op is accumulated by label (op, weight shape and type,
 * decode or prefill). Writes the table, largest first, into buf; returns its length. */
int glm_cuda_profile_text(char *buf, size_t cap);
void glm_cuda_profile_reset(void);

/* ---- device probes for glm-bench ---- */
/* Device-to-device copy bandwidth (bytes read + written per second) over a buffer of n bytes. */
int glm_cu_probe_copy(size_t n, int reps, double *bytes_per_s);
/* cuBLASLt FP8 GEMM rate (FLOP/s) for an n x n x n product on random data. */
int glm_cu_probe_fp8_gemm(int n, int reps, double *flop_per_s);

#ifdef __cplusplus
}
#endif
#endif
