/* backend.h - the operations the model code (models/glm4-moe.c) runs on a backend.
 *
 * One forward pass is: begin(plan), then a sequence of ops over float32 activation
 * buffers that the backend owns (host memory for the CPU backend, device memory for
 * CUDA), then logits() which copies the wanted rows to the host. Ops never read
 * activations back to the host, so a CUDA backend can capture a whole step in a graph.
 * Every op returns GLM_OK or a negative status with glm_last_error() set. */
#ifndef GLM_BACKEND_H
#define GLM_BACKEND_H

#include "comm.h"
#include "internal.h"

#define GLM_PAGE 16   /* tokens per KV page */

/* The host-side description of one batch, built by the context (lib/ctx.c). */
typedef struct {
    int n_tokens;               /* T */
    const int32_t *tokens;      /* [T] */
    const int32_t *pos;         /* [T] position of each token in its sequence */
    const int32_t *seq;         /* [T] sequence slot of each token */
    int n_seq_slots;            /* rows of page_table */
    int max_pages;              /* columns of page_table */
    const int32_t *page_table;  /* [n_seq_slots, max_pages] page id, -1 unused */
    int n_out;                  /* rows whose logits are wanted */
    const int32_t *out_rows;    /* [n_out] batch rows, ascending */
    float *hidden_host;         /* [n_tokens, n_embd] every row's last hidden state (before the
                                   final norm: what the MTP layer reads), or NULL */
    int eager;                  /* 1: a pass whose ops move activations to and from the host as
                                   they go (the MTP layer): run as issued, never in a graph */
} glm_plan;

typedef struct glm_backend glm_backend;

typedef struct {
    const char *name;
    /* Makes the model's weights usable by the backend (upload, repack). */
    int (*load)(glm_backend *be, glm_model *model);
    /* Pages that fit for KV given the params (CPU: from n_ctx*n_seq; CUDA: kv_frac). */
    int (*kv_pages_fit)(glm_backend *be, const glm_ctx_params *p);
    /* Allocates K and V storage for n_pages pages of GLM_PAGE tokens in every layer. */
    int (*kv_init)(glm_backend *be, int n_pages, glm_kv_type type);
    /* Reserves activation buffers for up to max_tokens tokens a pass. */
    int (*reserve)(glm_backend *be, int max_tokens);
    /* Returns a backend buffer of n bytes (float32 activations, int32 ids); NULL on OOM. */
    void *(*alloc)(glm_backend *be, size_t n_bytes);
    /* Starts a pass: copies the plan to where the ops can read it. */
    int (*begin)(glm_backend *be, const glm_plan *plan);

    /* x[T, n_embd] = tok_embd[tokens[t]] */
    int (*embed)(glm_backend *be, float *x);
    /* out[rows, dim] = x / rms(x) * w  (out may equal x) */
    int (*rmsnorm)(glm_backend *be, const float *x, const glm_weight *w, float *out, int rows);
    /* y[T, w.rows] = x[T, w.cols] @ W^T (+ bias) */
    int (*linear)(glm_backend *be, const glm_weight *w, const glm_weight *bias,
                  const float *x, float *y, int T);
    /* y[T, gate.rows] = silu(x @ Wg^T) * (x @ Wu^T) */
    int (*glu)(glm_backend *be, const glm_weight *gate, const glm_weight *up,
               const float *x, float *y, int T);
    /* Layer il: q/k RMSNorm per head (if use_qk_norm), partial RoPE at plan positions,
     * k,v stored into the sequence's pages, causal GQA attention over the sequence's
     * cache. q[T, n_head*hd] k,v[T, n_kv*hd] (q, k modified in place) -> out[T, n_head*hd] */
    int (*attention)(glm_backend *be, int il, float *q, float *k, const float *v, float *out);
    /* Router of layer il: scores = sigmoid(h @ Wr^T) (fp32); top-k by scores + correction
     * bias; weights = chosen scores (normalised if norm_topk_prob) * routed_scale.
     * h[T, n_embd] -> ids[T, k] (int32), w[T, k] */
    int (*moe_route)(glm_backend *be, int il, const float *h, int32_t *ids, float *w);
    /* out[T, n_embd] = sum_j w[t,j] * expert_{ids[t,j]}(h[t])   (SwiGLU experts); a
     * backend may add the shared expert in the same pass: *with_shared = 1 then */
    int (*moe_experts)(glm_backend *be, int il, const float *h, const int32_t *ids,
                       const float *w, float *out, int *with_shared);
    /* x[n] += y[n] */
    int (*add)(glm_backend *be, float *x, const float *y, size_t n);
    /* Tensor parallel (be->comm set): x[n] = the sum of every rank's x[n], in place. */
    int (*all_reduce)(glm_backend *be, float *x, size_t n);
    /* Final: logits_host[n_out, n_vocab] = rmsnorm(x[out_rows]) * out_norm @ lm_head^T.
     * Tensor parallel: each rank computes its vocabulary rows [r*V/N, (r+1)*V/N) (its
     * lm_head slice), gathers every rank's in rank order, and the rank given logits_host
     * (rank 0; NULL on the others) gets all n_vocab columns. */
    int (*logits)(glm_backend *be, const float *x, float *logits_host);
    void (*destroy)(glm_backend *be);
    /* Optional: host memory that logits() fills fastest (page-locked on CUDA);
     * NULL = malloc/free. */
    void *(*host_alloc)(glm_backend *be, size_t bytes);
    void (*host_free)(glm_backend *be, void *p);
    /* Optional (the MTP layer needs them; NULL = not implemented): host[n] = src[n] from a
     * backend buffer, and dst[n] = host[n] into one. Within a pass that is not eager, read
     * may be deferred to the pass's logits() (CUDA: one read a pass, copied in the graph). */
    int (*read)(glm_backend *be, float *host, const float *src, size_t n);
    int (*write)(glm_backend *be, float *dst, const float *host, size_t n);
    /* Optional (NULL: the caller samples on the host, with glm_sampler): ids[i] = a token
     * sampled from output row out_idx[i] of the last pass, whose logits are still in the
     * backend, under params[i] (lib/sampler.c's rules) with the penalties over
     * hist[i][0..n_hist[i]) (the request's generated tokens; repeat_last_n applies) and
     * the draw a function of (params[i].seed, steps[i]). The rows must be distinct; the
     * penalties change the backend's copy of them, so each pass's rows are sampled once.
     * GLM_ERR_NOT_IMPLEMENTED (nothing done) when the rows are not all in the backend. */
    int (*sample)(glm_backend *be, int n, const int32_t *out_idx, const glm_sampler_params *params,
                  const uint64_t *steps, const int32_t *const *hist, const int *n_hist, int32_t *ids);
} glm_backend_ops;

struct glm_backend {
    const glm_backend_ops *ops;
    glm_model *model;
    glm_ctx_params params;
    void *impl;                 /* backend-private state */
    void *fwd;                  /* the forward's activation buffers (models/glm4-moe.c) */
    glm_comm *comm;             /* tensor parallel: this rank's communicator (model is the rank's
                                   slice, lib/tp.c); NULL with one rank */
    uint64_t kv_bytes;          /* bytes of K and V storage kv_init allocated */
};

/* Creates the CPU backend. */
int glm_backend_cpu_new(glm_model *model, const glm_ctx_params *p, glm_backend **out);
/* Creates the CUDA backend (GLM_ERR_NOT_IMPLEMENTED in builds without CUDA). */
int glm_backend_cuda_new(glm_model *model, const glm_ctx_params *p, glm_backend **out);
/* GLM_OK when a CUDA device is present; else the error (no device, or a build without
 * CUDA: not implemented). */
int glm_cuda_check(void);
/* Device memory the CUDA backend's load() takes for model's weights (0 without CUDA). */
uint64_t glm_backend_cuda_weight_bytes(glm_model *model);


/* ---- tensor parallel (lib/tp.c): n_tp ranks, each a backend over its slice of the
 * model, run as threads of this process that meet in the communicator ---- */
typedef struct glm_tp glm_tp;
/* The first index of rank r's part when n rows split N ways: floor(n * r / N) (the parts
 * differ by at most one). */
int64_t glm_tp_part(int64_t n, int r, int N);
/* Checks n_tp and moe_split against the model; returns a status naming the field. */
int glm_tp_check(const glm_model *model, const glm_ctx_params *p);
/* Makes every rank: its model slice, its backend and the communicator. CPU: the ranks
 * are CPU backends and the local kind sums in host memory. CUDA: rank r is a CUDA backend
 * on its GPU (glm_tp_gpu) loading only its slice, all ranks in parallel after a check of
 * each GPU's free memory, and the NCCL kind sums (through host memory when ranks share a
 * GPU: "shared-gpu", no graphs). With p->tp_solo only rank 0 is made, with no
 * communicator (its own step, for projections). */
int glm_tp_new(glm_model *model, const glm_ctx_params *p, glm_tp **out);
/* The GPU of rank r under p: gpus[r % n_gpus], or r % (GPUs present) without a list. */
int glm_tp_gpu(const glm_ctx_params *p, int r);
/* KV pages every rank can hold: the fewest any rank fits, each GPU's share divided
 * between the ranks on it. */
int glm_tp_kv_pages_fit(glm_tp *tp, const glm_ctx_params *p);
/* The communicator's kind ("local", "nccl", "shared-gpu"), or "none" (one rank, tp_solo). */
const char *glm_tp_comm_kind(const glm_tp *tp);
void glm_tp_free(glm_tp *tp);
/* Ranks made (n_tp, or 1 with tp_solo). */
int glm_tp_size(const glm_tp *tp);
/* Rank r's backend (owned by tp). */
glm_backend *glm_tp_rank(glm_tp *tp, int r);
/* glm4moe_reserve and kv_init on every rank. */
int glm_tp_reserve(glm_tp *tp, int max_tokens);
int glm_tp_kv_init(glm_tp *tp, int n_pages, glm_kv_type type);
/* Runs glm4moe_forward on every rank at once (rank 0 on the calling thread) and returns
 * the first failure, its message naming the rank; rank 0 writes logits_host. */
int glm_tp_forward(glm_tp *tp, const glm_plan *plan, float *logits_host);

/* Bytes of K and V storage rank r of the context holds (0 for no such rank). */
uint64_t glm_ctx_kv_bytes(const glm_ctx *c, int rank);

/* Runs the whole model over one planned batch (models/glm4-moe.c). */
int glm4moe_forward(glm_backend *be, const glm_plan *plan, float *logits_host);
/* Allocates the forward's activation buffers for up to max_tokens (models/glm4-moe.c);
 * with be->params.mtp, the MTP layer's too. */
int glm4moe_reserve(glm_backend *be, int max_tokens);
/* Runs the MTP layer (layer n_layer) over one planned batch (models/glm4-moe.c): row t
 * has plan token t (the token after position pos[t]) and h_host[t] (the main model's, or
 * the previous MTP step's, hidden state at pos[t]) [T, n_embd]. Writes the last row's
 * output hidden state h_out[n_embd] and its draft logits logits_host[n_vocab]. */
int glm4moe_forward_mtp(glm_backend *be, const glm_plan *plan, const float *h_host, float *h_out, float *logits_host);

/* ---- speculative decoding's use of the context (lib/ctx.c) ---- */
/* glm_ctx_decode that also writes every batch row's last hidden state into
 * hidden[n_tokens, n_embd]; hidden NULL = glm_ctx_decode. */
int glm_ctx_decode_hidden(glm_ctx *ctx, const glm_batch *batch, float *hidden);
/* Runs the MTP layer on sequence seq at positions pos0..pos0+n-1 (tokens[n], h[n, n_embd]),
 * writing its KV into the sequence's pages (allocated when past its tokens) and the last
 * row's hidden h_out[n_embd] and logits[n_vocab]. pos0 must not pass the MTP positions
 * already written (glm_ctx_mtp_len). GLM_WARN_KV_FULL when pages run out (nothing done). */
int glm_ctx_mtp_forward(glm_ctx *ctx, int seq, int pos0, int n, const int32_t *tokens, const float *h,
                        float *h_out, float *logits);
/* MTP positions written for a sequence (0 after clear; cut by glm_ctx_seq_truncate). */
int glm_ctx_mtp_len(const glm_ctx *ctx, int seq);

#endif
