/* glm4-moe.c - the forward pass of Glm4MoeForCausalLM (GLM-4.5/4.6/4.7), written
 * once against the backend ops of lib/backend.h so the CPU reference and the CUDA
 * engine run the same graph. Shapes: T tokens in the batch, D = n_embd,
 * Q = n_head*head_dim, KV = n_head_kv*head_dim, F = n_ff (dense) or the shared
 * expert width, K = num_experts_per_tok.
 *
 * Tensor parallel (lib/tp.c): every rank runs this same forward on its slice of the
 * model (be->model: its heads, its rows of the intermediate dimensions, its vocabulary
 * rows), so Q, KV, F and the routed experts' work are the rank's share; the rank's o_proj
 * and FFN outputs are partial sums over its share, completed by all_reduce_sum (two a
 * layer), and the backend's logits() gathers every rank's vocabulary rows. With one
 * rank (be->comm NULL) the all-reduce is a no-op. */
#include "backend.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    int max_tokens;
    float *x;      /* [T, D] residual stream */
    float *h;      /* [T, D] normed input of a sub-block */
    float *q;      /* [T, Q] */
    float *k;      /* [T, KV] */
    float *v;      /* [T, KV] */
    float *att;    /* [T, Q] attention output */
    float *ff;     /* [T, F] SwiGLU activations (dense MLP or shared expert) */
    float *y;      /* [T, D] sub-block output */
    float *y2;     /* [T, D] shared expert output */
    int32_t *ids;  /* [T, K] routed experts */
    float *w;      /* [T, K] their weights */
    /* the MTP layer (with be->params.mtp) */
    float *cat;    /* [T, 2D] [enorm(embed), hnorm(h)] */
    float *mtp_lg; /* [V] the last row's draft logits */
} fwd_bufs;

int glm4moe_reserve(glm_backend *be, int max_tokens) {
    const glm_hparams *hp = &be->model->hp;
    fwd_bufs *b = calloc(1, sizeof *b);
    if (!b) return glm_err(GLM_ERR_OOM, "out of memory");
    size_t T = (size_t)max_tokens, D = (size_t)hp->n_embd;
    size_t Q = (size_t)hp->n_head * hp->head_dim, KV = (size_t)hp->n_head_kv * hp->head_dim;
    size_t F = (size_t)hp->n_ff_exp * hp->n_expert_shared;
    if (hp->n_dense_layer > 0 && (size_t)hp->n_ff > F) F = (size_t)hp->n_ff;
    size_t K = (size_t)(hp->n_expert_used > 0 ? hp->n_expert_used : 1);
    int rc = be->ops->reserve(be, max_tokens);
    if (rc) { free(b); return rc; }
    b->max_tokens = max_tokens;
    b->x = be->ops->alloc(be, T * D * 4);
    b->h = be->ops->alloc(be, T * D * 4);
    b->q = be->ops->alloc(be, T * Q * 4);
    b->k = be->ops->alloc(be, T * KV * 4);
    b->v = be->ops->alloc(be, T * KV * 4);
    b->att = be->ops->alloc(be, T * Q * 4);
    b->ff = be->ops->alloc(be, T * (F ? F : 1) * 4);
    b->y = be->ops->alloc(be, T * D * 4);
    b->y2 = be->ops->alloc(be, T * D * 4);
    b->ids = be->ops->alloc(be, T * K * 4);
    b->w = be->ops->alloc(be, T * K * 4);
    be->fwd = b; /* owned by the backend's allocator; the struct is freed by the ctx */
    if (!b->x || !b->h || !b->q || !b->k || !b->v || !b->att || !b->ff || !b->y || !b->y2 || !b->ids || !b->w)
        return glm_err(GLM_ERR_OOM, "out of memory reserving activations for %d tokens", max_tokens);
    if (be->params.mtp) {
        b->cat = be->ops->alloc(be, T * 2 * D * 4);
        b->mtp_lg = be->ops->alloc(be, (size_t)hp->n_vocab * 4);
        if (!b->cat || !b->mtp_lg) return glm_err(GLM_ERR_OOM, "out of memory reserving the MTP layer's activations");
    }
    return GLM_OK;
}

#define RUN(call) do { int rc_ = (call); if (rc_) return rc_; } while (0)

/* x[n] = the sum of every rank's x[n], in place (a no-op with one rank). Returns a
 * status naming a failed rank. */
static int all_reduce_sum(glm_backend *be, float *x, size_t n) {
    return be->comm ? be->ops->all_reduce(be, x, n) : GLM_OK;
}

/* Runs decoder layer il on the residual stream b->x [T, D] in place: attention (its KV
 * written at the plan's positions), then the dense MLP or the MoE. */
static int layer_forward(glm_backend *be, int il, int T) {
    const glm_backend_ops *op = be->ops;
    const glm_hparams *hp = &be->model->hp;
    const glm_layer *L = &be->model->layers[il];
    fwd_bufs *b = be->fwd;
    const size_t TD = (size_t)T * hp->n_embd;
    /* attention block */
    RUN(op->rmsnorm(be, b->x, &L->attn_norm, b->h, T));           /* h = rmsnorm(x)         [T, D] */
    RUN(op->linear(be, &L->wq, L->bq.name ? &L->bq : NULL, b->h, b->q, T)); /* [T, Q] */
    RUN(op->linear(be, &L->wk, L->bk.name ? &L->bk : NULL, b->h, b->k, T)); /* [T, KV] */
    RUN(op->linear(be, &L->wv, L->bv.name ? &L->bv : NULL, b->h, b->v, T)); /* [T, KV] */
    RUN(op->attention(be, il, b->q, b->k, b->v, b->att));      /* qk-norm, rope, cache   [T, Q] */
    RUN(op->linear(be, &L->wo, NULL, b->att, b->y, T));         /* y = att Wo^T (partial) [T, D] */
    RUN(all_reduce_sum(be, b->y, TD));                           /* y = sum over ranks     [T, D] */
    RUN(op->add(be, b->x, b->y, TD));                            /* x += y */
    /* MLP / MoE block */
    RUN(op->rmsnorm(be, b->x, &L->ffn_norm, b->h, T));           /* h = rmsnorm(x)         [T, D] */
    if (il < hp->n_dense_layer) {
        RUN(op->glu(be, &L->ffn_gate, &L->ffn_up, b->h, b->ff, T)); /* silu(hWg^T)*(hWu^T) [T, n_ff] */
        RUN(op->linear(be, &L->ffn_down, NULL, b->ff, b->y, T));    /* y = ff Wd^T (partial) [T, D] */
    } else {
        RUN(op->moe_route(be, il, b->h, b->ids, b->w));          /* top-K experts          [T, K] */
        int with_shared = 0;                                     /* y = sum w * expert(h)  [T, D], partial: the rank's experts or slices */
        RUN(op->moe_experts(be, il, b->h, b->ids, b->w, b->y, &with_shared));
        if (hp->n_expert_shared > 0 && !with_shared) {
            RUN(op->glu(be, &L->sh_gate, &L->sh_up, b->h, b->ff, T));  /* [T, F] */
            RUN(op->linear(be, &L->sh_down, NULL, b->ff, b->y2, T));   /* [T, D] */
            RUN(op->add(be, b->y, b->y2, TD));                   /* y += shared(h) */
        }
    }
    RUN(all_reduce_sum(be, b->y, TD));                           /* y = sum over ranks     [T, D] */
    return op->add(be, b->x, b->y, TD);                          /* x += y */
}

int glm4moe_forward(glm_backend *be, const glm_plan *p, float *logits_host) {
    const glm_backend_ops *op = be->ops;
    const glm_hparams *hp = &be->model->hp;
    fwd_bufs *b = be->fwd;
    const int T = p->n_tokens, D = hp->n_embd;
    if (T > b->max_tokens) return glm_err(GLM_ERR_ARG, "batch of %d tokens exceeds the reserved %d", T, b->max_tokens);
    if (p->hidden_host && (!op->read || be->comm))
        return glm_err(GLM_ERR_NOT_IMPLEMENTED, "hidden states for the MTP layer: not implemented on the %s backend%s",
                       op->name, be->comm ? " with tensor parallelism" : "");

    RUN(op->begin(be, p));
    RUN(op->embed(be, b->x));                                      /* x = embed(tokens)      [T, D] */
    for (int il = 0; il < hp->n_layer; il++) RUN(layer_forward(be, il, T));
    if (p->hidden_host) RUN(op->read(be, p->hidden_host, b->x, (size_t)T * D)); /* hidden = x [T, D] */
    return op->logits(be, b->x, logits_host);                        /* norm + lm_head  [n_out, V] */
}

int glm4moe_forward_mtp(glm_backend *be, const glm_plan *p, const float *h_host, float *h_out, float *logits_host) {
    const glm_backend_ops *op = be->ops;
    const glm_model *m = be->model;
    const glm_hparams *hp = &m->hp;
    fwd_bufs *b = be->fwd;
    const int T = p->n_tokens, D = hp->n_embd, V = hp->n_vocab;
    if (!op->read || !op->write || be->comm)
        return glm_err(GLM_ERR_NOT_IMPLEMENTED, "the MTP layer: not implemented on the %s backend%s", op->name,
                       be->comm ? " with tensor parallelism" : "");
    if (!m->has_mtp || !b->cat) return glm_err(GLM_ERR_ARG, "the MTP layer is not loaded in this model and context");
    if (T < 1 || T > b->max_tokens) return glm_err(GLM_ERR_ARG, "MTP batch of %d tokens (1 to %d)", T, b->max_tokens);
    const glm_weight *E = glm_mtp_embd(m);
    if (!E->data) return glm_err(GLM_ERR_NOT_IMPLEMENTED, "the MTP layer of a model without host weights (synthetic): not implemented");
    float *row = malloc((size_t)D * sizeof *row);
    if (!row) return glm_err(GLM_ERR_OOM, "out of memory");
    int rc = op->begin(be, p);
    /* y[t] = embed(token t), zero at position 0 (as vLLM's GLM-4 MoE MTP masks it) */
    for (int t = 0; !rc && t < T; t++) {
        if (p->tokens[t] < 0 || p->tokens[t] >= V) { rc = glm_err(GLM_ERR_ARG, "MTP token id %d out of range [0, %d)", p->tokens[t], V); break; }
        if (p->pos[t] == 0) memset(row, 0, (size_t)D * sizeof *row);
        else glm_weight_row(E, p->tokens[t], row);
        rc = op->write(be, b->y + (size_t)t * D, row, (size_t)D);
    }
    free(row);
    if (rc) return rc;
    RUN(op->write(be, b->h, h_host, (size_t)T * D));               /* h = the hidden states  [T, D] */
    for (int t = 0; t < T; t++) {                                  /* cat[t] = [enorm(y[t]), hnorm(h[t])] */
        RUN(op->rmsnorm(be, b->y + (size_t)t * D, &m->mtp_enorm, b->cat + (size_t)t * 2 * D, 1));
        RUN(op->rmsnorm(be, b->h + (size_t)t * D, &m->mtp_hnorm, b->cat + (size_t)t * 2 * D + D, 1));
    }
    RUN(op->linear(be, &m->mtp_eh_proj, NULL, b->cat, b->x, T));  /* x = cat eh_proj^T      [T, D] */
    RUN(layer_forward(be, hp->n_layer, T));                        /* the MTP decoder block  [T, D] */
    const float *last = b->x + (size_t)(T - 1) * D;
    RUN(op->read(be, h_out, last, (size_t)D));                     /* h_out = x[T-1]         [D] */
    RUN(op->rmsnorm(be, last, &m->mtp_head_norm, b->h, 1));        /* shared_head.norm       [1, D] */
    RUN(op->linear(be, glm_mtp_head(m), NULL, b->h, b->mtp_lg, 1)); /* draft logits          [1, V] */
    return op->read(be, logits_host, b->mtp_lg, (size_t)V);
}
