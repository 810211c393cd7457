/* ctx.c - a context: one backend, a paged KV cache (16-token pages, a page table per
 * sequence, a free list, a reference count per page so that full pages can be shared
 * between sequences and the scheduler's prefix cache), and glm_ctx_decode, which plans a batch (positions, pages,
 * logits rows), splits it into passes of at most n_batch tokens and runs the model. */
#include "backend.h"
#include "scheduler.h"

#include <stdlib.h>
#include <string.h>

struct glm_ctx {
    glm_model *model;
    glm_backend *be;        /* with n_tp > 1: rank 0's backend, owned by tp */
    glm_tp *tp;             /* tensor-parallel ranks, or NULL (lib/tp.c) */
    glm_ctx_params p;
    int n_pages;
    int max_pages;          /* pages one sequence may hold: ceil(n_ctx / GLM_PAGE) */
    int32_t *free_pages;    /* stack of free page ids */
    int n_free;
    int32_t *page_ref;      /* [n_pages] holders of each page (sequences, the prefix cache); 0 = free */
    int32_t *page_table;    /* [n_seq_max, max_pages] */
    int32_t *seq_len;       /* [n_seq_max] */
    int32_t *mtp_len;       /* [n_seq_max] MTP-layer positions written (params.mtp); the pages a
                               sequence holds cover max(seq_len, mtp_len) tokens */
    float *logits;          /* [cap_logits, n_vocab] rows wanted by the last decode */
    int cap_logits;         /* rows the logits buffer holds (it only grows) */
    int32_t *logit_row;     /* [n_batch] batch row -> index into logits, -1 none */
    int cap_rows;
    /* logits indices [dev_first, dev_first + dev_n) of the last decode's last pass, still
     * on the device for glm_ctx_sample (dev_n 0: none, or sampled already) */
    int dev_first, dev_n;
    /* per pass */
    int32_t *pos, *seq, *out_rows;
};

/* Pages of GLM_PAGE tokens that hold n tokens (no overflow for any int n >= 0). */
static int pages_for(int64_t n) { return (int)((n + GLM_PAGE - 1) / GLM_PAGE); }

glm_ctx_params glm_ctx_default_params(void) {
    glm_ctx_params p = {0};
    p.device = GLM_DEVICE_CPU;
    p.n_ctx = 4096;
    p.n_seq_max = 1;
    p.n_batch = 512;
    p.kv_frac = 0.9f;
    p.kv_type = GLM_KV_BF16;
    p.n_tp = 1;
    return p;
}

int glm_ctx_new(glm_model *model, const glm_ctx_params *params, glm_ctx **out) {
    *out = NULL;
    glm_ctx_params p = params ? *params : glm_ctx_default_params();
    if (p.n_ctx < 1 || p.n_seq_max < 1 || p.n_batch < 1)
        return glm_err(GLM_ERR_ARG, "n_ctx, n_seq_max and n_batch must be positive");
    /* the page table holds n_seq_max x ceil(n_ctx / GLM_PAGE) int32 page ids */
    const int64_t table = (int64_t)p.n_seq_max * pages_for(p.n_ctx);
    if (table > INT32_MAX)
        return glm_err(GLM_ERR_ARG, "n_seq_max %d x n_ctx %d needs %lld KV pages of %d tokens, more than %d",
                       p.n_seq_max, p.n_ctx, (long long)table, GLM_PAGE, INT32_MAX);
    glm_ctx *c = calloc(1, sizeof *c);
    if (!c) return glm_err(GLM_ERR_OOM, "out of memory");
    c->model = model;
    c->p = p;
    int rc = glm_tp_check(model, &p);
    if (!rc && p.mtp && !model->has_mtp)
        rc = glm_err(GLM_ERR_ARG, "params.mtp: the model has no MTP layer bound (num_nextn_predict_layers %d)", model->hp.n_nextn);
    else if (!rc && p.mtp && (p.n_tp > 1 || p.dist_init))
        rc = glm_err(GLM_ERR_NOT_IMPLEMENTED, "the MTP layer (speculative decoding) on several tensor-parallel ranks: "
                     "not implemented");
    if (!rc && (p.n_tp > 1 || p.dist_init)) { if (!(rc = glm_tp_new(model, &p, &c->tp))) c->be = glm_tp_rank(c->tp, 0); }
    else if (!rc) rc = p.device == GLM_DEVICE_CUDA ? glm_backend_cuda_new(model, &p, &c->be) : glm_backend_cpu_new(model, &p, &c->be);
    if (rc) goto fail;
    c->max_pages = pages_for(p.n_ctx);
    c->n_pages = p.n_kv_pages > 0 ? p.n_kv_pages : c->tp ? glm_tp_kv_pages_fit(c->tp, &p) : c->be->ops->kv_pages_fit(c->be, &p);
    if (c->n_pages < 1) { rc = glm_err(GLM_ERR_OOM, "no memory left for KV pages"); goto fail; }
    if ((rc = c->tp ? glm_tp_reserve(c->tp, p.n_batch) : glm4moe_reserve(c->be, p.n_batch))) goto fail;
    if ((rc = c->tp ? glm_tp_kv_init(c->tp, c->n_pages, p.kv_type) : c->be->ops->kv_init(c->be, c->n_pages, p.kv_type))) goto fail;
    c->free_pages = malloc((size_t)c->n_pages * sizeof(int32_t));
    c->page_ref = calloc((size_t)c->n_pages, sizeof(int32_t));
    c->page_table = malloc((size_t)p.n_seq_max * c->max_pages * sizeof(int32_t));
    c->seq_len = calloc((size_t)p.n_seq_max, sizeof(int32_t));
    c->mtp_len = calloc((size_t)p.n_seq_max, sizeof(int32_t));
    c->pos = malloc((size_t)p.n_batch * sizeof(int32_t));
    c->seq = malloc((size_t)p.n_batch * sizeof(int32_t));
    c->out_rows = malloc((size_t)p.n_batch * sizeof(int32_t));
    if (!c->free_pages || !c->page_ref || !c->page_table || !c->seq_len || !c->mtp_len || !c->pos || !c->seq || !c->out_rows) {
        rc = glm_err(GLM_ERR_OOM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < c->n_pages; i++) c->free_pages[i] = c->n_pages - 1 - i;
    c->n_free = c->n_pages;
    memset(c->page_table, 0xff, (size_t)p.n_seq_max * c->max_pages * sizeof(int32_t));
    *out = c;
    return GLM_OK;
fail:
    glm_ctx_free(c);
    return rc;
}

/* The logits buffer comes from the backend where it has a faster kind of host memory. */
static void logits_free(glm_ctx *c) {
    if (c->logits && c->be && c->be->ops->host_free) c->be->ops->host_free(c->be, c->logits);
    else free(c->logits);
    c->logits = NULL;
    c->cap_logits = 0;
}

static int logits_reserve(glm_ctx *c, int rows) {
    if (rows <= c->cap_logits) return GLM_OK;
    logits_free(c);
    const size_t bytes = (size_t)rows * c->model->hp.n_vocab * sizeof(float);
    c->logits = c->be->ops->host_alloc ? c->be->ops->host_alloc(c->be, bytes) : malloc(bytes);
    if (!c->logits) return glm_err(GLM_ERR_OOM, "out of memory for %d rows of logits (%.1f MiB)", rows, bytes / 1048576.0);
    c->cap_logits = rows;
    return GLM_OK;
}

void glm_ctx_free(glm_ctx *c) {
    if (!c) return;
    void *fwd = c->be ? c->be->fwd : NULL;
    logits_free(c);
    if (c->tp) glm_tp_free(c->tp);
    else {
        if (c->be) c->be->ops->destroy(c->be);
        free(fwd);
    }
    free(c->free_pages);
    free(c->page_ref);
    free(c->page_table);
    free(c->seq_len);
    free(c->mtp_len);
    free(c->logit_row);
    free(c->pos);
    free(c->seq);
    free(c->out_rows);
    free(c);
}

int glm_ctx_seq_clear(glm_ctx *c, int seq) {
    if (seq < 0 || seq >= c->p.n_seq_max) return glm_err(GLM_ERR_ARG, "sequence %d out of range [0, %d)", seq, c->p.n_seq_max);
    int32_t *pt = c->page_table + (size_t)seq * c->max_pages;
    for (int i = 0; i < c->max_pages; i++)
        if (pt[i] >= 0) { glm_ctx_page_release(c, pt[i]); pt[i] = -1; }
    c->seq_len[seq] = 0;
    c->mtp_len[seq] = 0;
    return GLM_OK;
}

void glm_ctx_page_retain(glm_ctx *c, int32_t page) { c->page_ref[page]++; }

void glm_ctx_page_release(glm_ctx *c, int32_t page) {
    if (--c->page_ref[page] == 0) c->free_pages[c->n_free++] = page;
}

int glm_ctx_page_refs(const glm_ctx *c, int32_t page) { return c->page_ref[page]; }

const glm_ctx_params *glm_ctx_params_of(const glm_ctx *c) { return &c->p; }
const glm_model *glm_ctx_model(const glm_ctx *c) { return c->model; }

int32_t glm_ctx_seq_page(const glm_ctx *c, int seq, int i) {
    if (seq < 0 || seq >= c->p.n_seq_max || i < 0 || i >= c->max_pages) return -1;
    return c->page_table[(size_t)seq * c->max_pages + i];
}

int glm_ctx_seq_share(glm_ctx *c, int seq, const int32_t *pages, int n, int mtp) {
    if (seq < 0 || seq >= c->p.n_seq_max) return glm_err(GLM_ERR_ARG, "sequence %d out of range [0, %d)", seq, c->p.n_seq_max);
    if (c->seq_len[seq] || c->mtp_len[seq])
        return glm_err(GLM_ERR_ARG, "sequence %d is not empty (%d tokens)", seq, c->seq_len[seq] > c->mtp_len[seq] ? c->seq_len[seq] : c->mtp_len[seq]);
    if (mtp && !c->p.mtp) return glm_err(GLM_ERR_ARG, "shared MTP rows in a context made without params.mtp");
    if (n < 0 || n > c->max_pages) return glm_err(GLM_ERR_ARG, "%d shared pages, a sequence holds at most %d", n, c->max_pages);
    for (int i = 0; i < n; i++)
        if (pages[i] < 0 || pages[i] >= c->n_pages || !c->page_ref[pages[i]])
            return glm_err(GLM_ERR_ARG, "shared page %d: %d is not a page in use", i, pages[i]);
    int32_t *pt = c->page_table + (size_t)seq * c->max_pages;
    for (int i = 0; i < n; i++) { pt[i] = pages[i]; c->page_ref[pages[i]]++; }
    c->seq_len[seq] = n * GLM_PAGE;
    c->mtp_len[seq] = mtp ? n * GLM_PAGE : 0;
    return GLM_OK;
}

int glm_ctx_seq_len(const glm_ctx *c, int seq) {
    return seq >= 0 && seq < c->p.n_seq_max ? c->seq_len[seq] : 0;
}

int glm_ctx_kv_pages_free(const glm_ctx *c) { return c->n_free; }
int glm_ctx_kv_pages_total(const glm_ctx *c) { return c->n_pages; }

const float *glm_ctx_logits(glm_ctx *c, int i) {
    if (i < 0 || i >= c->cap_rows || !c->logit_row || c->logit_row[i] < 0) {
        glm_err(GLM_ERR_ARG, "no logits for batch row %d", i);
        return NULL;
    }
    return c->logits + (size_t)c->logit_row[i] * c->model->hp.n_vocab;
}

int glm_ctx_samples_on_device(const glm_ctx *c) { return !c->tp && c->be->ops->sample != NULL; }

int glm_ctx_sample(glm_ctx *c, int n, const int32_t *rows, const glm_sampler_params *params, const uint64_t *steps,
                   const int32_t *const *hist, const int *n_hist, int32_t *ids) {
    if (n < 0 || (n > 0 && (!rows || !params || !ids))) return glm_err(GLM_ERR_ARG, "glm_ctx_sample: %d rows without arrays", n);
    if (!glm_ctx_samples_on_device(c))
        return glm_err(GLM_ERR_NOT_IMPLEMENTED, "sampling on the device: not with the %s backend%s", c->be->ops->name,
                       c->tp ? " over tensor-parallel ranks" : "");
    if (n == 0) return GLM_OK;
    int32_t *idx = malloc((size_t)n * sizeof *idx);
    if (!idx) return glm_err(GLM_ERR_OOM, "out of memory");
    int rc = GLM_OK;
    for (int i = 0; i < n && !rc; i++) {
        const int r = rows[i];
        if (r < 0 || r >= c->cap_rows || !c->logit_row || c->logit_row[r] < 0) rc = glm_err(GLM_ERR_ARG, "no logits for batch row %d", r);
        else if (n_hist && n_hist[i] > 0 && (!hist || !hist[i])) rc = glm_err(GLM_ERR_ARG, "row %d: %d history tokens without the array", i, n_hist[i]);
        else if ((idx[i] = c->logit_row[r] - c->dev_first) < 0 || idx[i] >= c->dev_n)
            rc = glm_err(GLM_ERR_NOT_IMPLEMENTED, "the logits of batch row %d are not on the device (an earlier pass, or sampled already)", r);
        for (int j = 0; j < i && !rc; j++)
            if (rows[j] == r) rc = glm_err(GLM_ERR_ARG, "batch row %d sampled twice", r);
    }
    if (!rc) {
        rc = c->be->ops->sample(c->be, n, idx, params, steps, hist, n_hist, ids);
        if (rc != GLM_ERR_NOT_IMPLEMENTED) c->dev_n = 0;  /* the penalties changed the device's rows */
    }
    free(idx);
    return rc;
}

/* Pages sequence s holds when its main cache has len tokens (the MTP layer's may reach further). */
static int held_pages(const glm_ctx *c, int s, int64_t len) {
    return pages_for(len > c->mtp_len[s] ? len : c->mtp_len[s]);
}

int glm_ctx_decode(glm_ctx *c, const glm_batch *b) { return glm_ctx_decode_hidden(c, b, NULL); }

int glm_ctx_decode_hidden(glm_ctx *c, const glm_batch *b, float *hidden) {
    const int T = b->n_tokens, V = c->model->hp.n_vocab;
    if (T < 1 || !b->tokens) return glm_err(GLM_ERR_ARG, "empty batch");
    /* validate and count the pages the batch needs, before touching any state */
    int *add = calloc((size_t)c->p.n_seq_max * 2, sizeof(int)), *old_len = add + c->p.n_seq_max;
    if (!add) return glm_err(GLM_ERR_OOM, "out of memory");
    memcpy(old_len, c->seq_len, sizeof(int) * (size_t)c->p.n_seq_max);
    int need = 0, rc = GLM_OK;
    for (int t = 0; t < T; t++) {
        int s = b->seq ? b->seq[t] : 0;
        if (s < 0 || s >= c->p.n_seq_max) { rc = glm_err(GLM_ERR_ARG, "token %d: sequence %d out of range [0, %d)", t, s, c->p.n_seq_max); goto done; }
        if (b->tokens[t] < 0 || b->tokens[t] >= V) { rc = glm_err(GLM_ERR_ARG, "token %d: id %d out of range [0, %d)", t, b->tokens[t], V); goto done; }
        add[s]++;
    }
    for (int s = 0; s < c->p.n_seq_max; s++) {
        if (!add[s]) continue;
        const int64_t len = (int64_t)c->seq_len[s] + add[s];
        if (len > c->p.n_ctx) { rc = glm_err(GLM_ERR_ARG, "sequence %d would hold %lld tokens, more than the context size %d", s, (long long)len, c->p.n_ctx); goto done; }
        need += held_pages(c, s, len) - held_pages(c, s, c->seq_len[s]);
    }
    if (need > c->n_free) {
        rc = glm_err(GLM_WARN_KV_FULL, "KV cache full: the batch needs %d pages, %d of %d free", need, c->n_free, c->n_pages);
        goto done;
    }
    /* logits buffer for the rows that want them */
    int n_want = 0;
    for (int t = 0; t < T; t++) n_want += b->logits ? b->logits[t] != 0 : t == T - 1;
    if (T > c->cap_rows) {
        int32_t *nr = realloc(c->logit_row, (size_t)T * sizeof *nr);
        if (!nr) { rc = glm_err(GLM_ERR_OOM, "out of memory"); goto done; }
        c->logit_row = nr;
        c->cap_rows = T;
    }
    c->dev_n = 0;
    if ((rc = logits_reserve(c, n_want ? n_want : 1))) goto done;
    for (int i = 0; i < c->cap_rows; i++) c->logit_row[i] = -1;
    /* allocate pages */
    for (int s = 0; s < c->p.n_seq_max; s++) {
        if (!add[s]) continue;
        int32_t *pt = c->page_table + (size_t)s * c->max_pages;
        int p0 = held_pages(c, s, c->seq_len[s]), p1 = held_pages(c, s, (int64_t)c->seq_len[s] + add[s]);
        for (int i = p0; i < p1; i++) { pt[i] = c->free_pages[--c->n_free]; c->page_ref[pt[i]] = 1; }
    }
    /* passes of at most n_batch tokens, in order */
    int out_i = 0;
    for (int t0 = 0; t0 < T; t0 += T - t0 < c->p.n_batch ? T - t0 : c->p.n_batch) {
        int n = T - t0 < c->p.n_batch ? T - t0 : c->p.n_batch, n_out = 0;
        for (int i = 0; i < n; i++) {
            int t = t0 + i, s = b->seq ? b->seq[t] : 0;
            c->seq[i] = s;
            c->pos[i] = c->seq_len[s]++;
            if (b->logits ? b->logits[t] != 0 : t == T - 1) {
                c->out_rows[n_out++] = i;
                c->logit_row[t] = out_i++;
            }
        }
        glm_plan plan = {
            .n_tokens = n, .tokens = b->tokens + t0, .pos = c->pos, .seq = c->seq,
            .n_seq_slots = c->p.n_seq_max, .max_pages = c->max_pages, .page_table = c->page_table,
            .n_out = n_out, .out_rows = c->out_rows,
            .hidden_host = hidden ? hidden + (size_t)t0 * c->model->hp.n_embd : NULL,
        };
        float *lg = c->logits + (size_t)(out_i - n_out) * V;
        c->dev_n = 0;
        rc = c->tp ? glm_tp_forward(c->tp, &plan, lg) : glm4moe_forward(c->be, &plan, lg);
        if (rc) goto undo;
        c->dev_first = out_i - n_out;
        c->dev_n = n_out;
    }
    goto done;
undo:
    c->dev_n = 0;
    /* a failed pass leaves the sequences as they were before this call */
    for (int s = 0; s < c->p.n_seq_max; s++) {
        if (!add[s]) continue;
        int old = old_len[s];
        int32_t *pt = c->page_table + (size_t)s * c->max_pages;
        for (int i = held_pages(c, s, old); i < held_pages(c, s, (int64_t)old + add[s]); i++) {
            glm_ctx_page_release(c, pt[i]);
            pt[i] = -1;
        }
        c->seq_len[s] = old;
    }
done:
    free(add);
    return rc;
}

int glm_ctx_tp_ranks(const glm_ctx *c) { return c->tp ? glm_tp_size(c->tp) : 1; }
const char *glm_ctx_tp_kind(const glm_ctx *c) { return c->tp ? glm_tp_comm_kind(c->tp) : "none"; }
double glm_ctx_comm_seconds(const glm_ctx *c, long *n) {
    if (n) *n = 0;
    return c->tp && c->be->comm ? glm_comm_seconds(c->be->comm, n) : 0.0;
}

uint64_t glm_ctx_kv_bytes(const glm_ctx *c, int rank) {
    if (!c->tp) return rank == 0 ? c->be->kv_bytes : 0;
    const glm_backend *be = glm_tp_rank(c->tp, rank);
    return be ? be->kv_bytes : 0;
}

int glm_ctx_seq_truncate(glm_ctx *c, int seq, int len) {
    if (seq < 0 || seq >= c->p.n_seq_max) return glm_err(GLM_ERR_ARG, "sequence %d out of range [0, %d)", seq, c->p.n_seq_max);
    if (len < 0 || len > c->seq_len[seq])
        return glm_err(GLM_ERR_ARG, "truncating sequence %d of %d tokens to %d", seq, c->seq_len[seq], len);
    int32_t *pt = c->page_table + (size_t)seq * c->max_pages;
    if (len % GLM_PAGE && pt[len / GLM_PAGE] >= 0 && c->page_ref[pt[len / GLM_PAGE]] > 1)
        return glm_err(GLM_ERR_ARG, "truncating sequence %d to %d tokens: page %d is shared (its next token would be written into it)",
                       seq, len, len / GLM_PAGE);
    for (int i = pages_for(len); i < c->max_pages; i++)
        if (pt[i] >= 0) { glm_ctx_page_release(c, pt[i]); pt[i] = -1; }
    c->seq_len[seq] = len;
    if (c->mtp_len[seq] > len) c->mtp_len[seq] = len;
    return GLM_OK;
}

int glm_ctx_mtp_len(const glm_ctx *c, int seq) {
    return seq >= 0 && seq < c->p.n_seq_max ? c->mtp_len[seq] : 0;
}

int glm_ctx_mtp_forward(glm_ctx *c, int seq, int pos0, int n, const int32_t *tokens, const float *h, float *h_out,
                        float *logits) {
    if (!c->p.mtp) return glm_err(GLM_ERR_ARG, "this context was made without params.mtp");
    if (seq < 0 || seq >= c->p.n_seq_max) return glm_err(GLM_ERR_ARG, "sequence %d out of range [0, %d)", seq, c->p.n_seq_max);
    if (n < 1 || n > c->p.n_batch) return glm_err(GLM_ERR_ARG, "MTP batch of %d tokens (1 to n_batch %d)", n, c->p.n_batch);
    if (pos0 < 0 || pos0 > c->mtp_len[seq])
        return glm_err(GLM_ERR_ARG, "MTP position %d of sequence %d: positions 0..%d are written", pos0, seq, c->mtp_len[seq] - 1);
    if ((int64_t)pos0 + n > c->p.n_ctx)
        return glm_err(GLM_ERR_ARG, "MTP positions up to %lld pass the context size %d", (long long)pos0 + n, c->p.n_ctx);
    c->dev_n = 0;  /* the MTP pass's logits take the device's place */
    int32_t *pt = c->page_table + (size_t)seq * c->max_pages;
    const int old = c->mtp_len[seq], end = pos0 + n > old ? pos0 + n : old;
    const int p0 = held_pages(c, seq, c->seq_len[seq]);
    const int p1 = pages_for(end > c->seq_len[seq] ? end : c->seq_len[seq]);
    if (p1 - p0 > c->n_free)
        return glm_err(GLM_WARN_KV_FULL, "KV cache full: the MTP layer needs %d pages, %d of %d free", p1 - p0, c->n_free, c->n_pages);
    for (int i = p0; i < p1; i++) { pt[i] = c->free_pages[--c->n_free]; c->page_ref[pt[i]] = 1; }
    int32_t *pos = malloc((size_t)n * 2 * sizeof *pos), *sq = pos + n;
    if (!pos) { for (int i = p0; i < p1; i++) { glm_ctx_page_release(c, pt[i]); pt[i] = -1; } return glm_err(GLM_ERR_OOM, "out of memory"); }
    for (int i = 0; i < n; i++) { pos[i] = pos0 + i; sq[i] = seq; }
    const int32_t last = n - 1;
    glm_plan plan = {
        .n_tokens = n, .tokens = tokens, .pos = pos, .seq = sq,
        .n_seq_slots = c->p.n_seq_max, .max_pages = c->max_pages, .page_table = c->page_table,
        .n_out = 1, .out_rows = &last, .eager = 1,
    };
    int rc = glm4moe_forward_mtp(c->be, &plan, h, h_out, logits);
    free(pos);
    if (rc) {   /* the pages this call took go back */
        for (int i = p0; i < p1; i++) { glm_ctx_page_release(c, pt[i]); pt[i] = -1; }
        return rc;
    }
    c->mtp_len[seq] = end;
    return GLM_OK;
}
