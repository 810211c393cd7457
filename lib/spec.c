/* spec.c - speculative decoding with the model's own MTP layer (layer n_layer).
 *
 * A sequence's state between steps: the main cache holds positions 0..M-1, the last
 * token returned (t_M) is not in it yet, and the MTP layer has seen every position up to
 * M-1 (row p: the token after p and the main model's hidden state at p), so its draft
 * logits for t_{M+1} and its output hidden state g are ready. A step:
 *   1. drafts d_1 from those logits, then d_j (j >= 2) by running the MTP layer at
 *      position M+j-2 on (d_{j-1}, g) (its own previous output stands in for the main
 *      model's hidden state, as vLLM and SGLang do);
 *   2. verifies [t_M, d_1..d_N] in one forward of the main model (N+1 rows, all logits,
 *      all hidden states);
 *   3. accepts d_j while the main model agrees (greedy: its argmax; sampling: the
 *      rejection rule of glm_spec_accept), then takes the main model's next token (the
 *      correction, or the bonus token after N acceptances);
 *   4. cuts the cache back to M + 1 + k tokens (k accepted) and runs the MTP layer over
 *      positions M..M+k with the verified hidden states, which rewrites the rows the
 *      drafts wrote and leaves the next step's draft logits ready.
 * With penalties on, every distribution (the draft's q_j, the main model's p_j, greedy's
 * argmax) is taken after glm_apply_penalties over the sequence's history as the sampler
 * sees it without drafting: the prompt, the tokens returned, then d_1..d_{j-1}. */
#include "backend.h"
#include "scheduler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int active;
    int32_t next;      /* the last token returned (not in the cache) */
    float *qlog;       /* [V] the MTP layer's logits for the token after next */
    float *g;          /* [D] the MTP layer's last output hidden state */
    int32_t *hist;     /* [cap_hist] with penalties on: the sequence's last tokens (the prompt
                          and those returned, next included; the last repeat_last_n) */
    int n_hist, cap_hist;
} seq_state;

struct glm_spec {
    glm_ctx *ctx;
    const glm_model *m;
    int n_draft, V, D;
    glm_sampler_params sp;
    uint64_t rng;
    glm_spec_stats st;
    seq_state *seqs;   /* [n_seq_max] */
    int n_seq;
    float *hid;        /* [max(n_batch, n_draft + 1), D] hidden states of a verify or prefill pass */
    int cap_hid;
    float *q;          /* [n_draft, V] draft distributions */
    float *dg, *dlog;  /* [D], [V] the MTP layer's output and logits for drafts 2..N (the
                          sequence's own, g and qlog, stay as they are until the step succeeds) */
    glm_spec_work w;   /* the rules' scratch */
    int pen;           /* a penalty is on */
    int32_t *toks;     /* [n_draft + 1] */
    int8_t *want;      /* [n_draft + 1] */
};

/* ---- the rules (shared with the scheduler, lib/internal.h) ---- */

int glm_spec_work_init(glm_spec_work *w, int V) {
    w->V = V;
    w->p = malloc((size_t)V * sizeof *w->p);
    w->pl = malloc((size_t)V * sizeof *w->pl);
    w->idx = malloc((size_t)V * sizeof *w->idx);
    if (w->p && w->pl && w->idx) return GLM_OK;
    glm_spec_work_free(w);
    return glm_err(GLM_ERR_OOM, "out of memory");
}

void glm_spec_work_free(glm_spec_work *w) {
    free(w->p);
    free(w->pl);
    free(w->idx);
    w->p = w->pl = NULL;
    w->idx = NULL;
}

uint64_t glm_spec_rng_init(uint64_t seed) {
    uint64_t r = seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
    return r ? r : 1;
}

/* Returns a uniform double in [0, 1) from the generator *rng. */
static double uniform(uint64_t *rng) {
    uint64_t x = *rng;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    *rng = x;
    return (double)((x * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}

/* The index of the largest logit (the first one on ties, as the sampler picks). */
static int32_t argmax(const float *l, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++) if (l[i] > l[best]) best = i;
    return best;
}

/* qsort_r order of token ids by logit (the array in arg), largest first, then by id. */
static int by_logit_desc(const void *a, const void *b, void *arg) {
    const float *l = arg;
    float x = l[*(const int32_t *)a], y = l[*(const int32_t *)b];
    if (x != y) return x > y ? -1 : 1;
    return *(const int32_t *)a - *(const int32_t *)b;
}

/* p[V] = the distribution the sampler draws from for these logits: top-k, softmax at the
 * temperature, min-p, top-p (the sampler's order), renormalised; zero elsewhere. */
static void dist(glm_spec_work *w, const glm_sampler_params *sp, const float *l, float *p) {
    const int V = w->V;
    for (int i = 0; i < V; i++) w->idx[i] = i;
    qsort_r(w->idx, (size_t)V, sizeof *w->idx, by_logit_desc, (void *)l);
    int n = sp->top_k > 0 && sp->top_k < V ? sp->top_k : V;
    memset(p, 0, (size_t)V * sizeof *p);
    const double mx = l[w->idx[0]];
    double sum = 0;
    for (int i = 0; i < n; i++) sum += exp((l[w->idx[i]] - mx) / sp->temp);
    double p0 = 1.0 / sum;   /* the largest probability */
    if (sp->min_p > 0) {
        int m = 1;
        while (m < n && exp((l[w->idx[m]] - mx) / sp->temp) / sum >= sp->min_p * p0) m++;
        n = m;
    }
    if (sp->top_p < 1.0f) {
        double c = 0;
        int m = 0;
        while (m < n) { c += exp((l[w->idx[m++]] - mx) / sp->temp) / sum; if (c >= sp->top_p) break; }
        n = m;
    }
    double tot = 0;
    for (int i = 0; i < n; i++) tot += exp((l[w->idx[i]] - mx) / sp->temp);
    for (int i = 0; i < n; i++) p[w->idx[i]] = (float)(exp((l[w->idx[i]] - mx) / sp->temp) / tot);
}

/* Returns the token drawn from p[n] with u in [0, 1) (the last token with mass on a
 * rounding shortfall). */
static int32_t draw(const float *p, int n, double u) {
    double tot = 0, c = 0;
    int32_t last = 0;
    for (int i = 0; i < n; i++) tot += p[i];
    u *= tot;
    for (int i = 0; i < n; i++) {
        if (p[i] <= 0) continue;
        c += p[i];
        last = i;
        if (u < c) return i;
    }
    return last;
}

/* Non-zero when one of sp's penalties is on. */
static int has_penalty(const glm_sampler_params *sp) {
    return sp->repeat_penalty != 1.0f || sp->presence_penalty != 0 || sp->frequency_penalty != 0;
}

const float *glm_spec_penalised(glm_spec_work *w, const glm_sampler_params *sp, const float *l, const int32_t *hist, int n_hist) {
    if (!has_penalty(sp)) return l;
    memcpy(w->pl, l, (size_t)w->V * sizeof *w->pl);
    glm_apply_penalties(w->pl, w->V, sp, hist, n_hist);
    return w->pl;
}

int32_t glm_spec_pick(glm_spec_work *w, const glm_sampler_params *sp, uint64_t *rng, const float *l, float *p) {
    if (sp->temp <= 0) return argmax(l, w->V);
    dist(w, sp, l, p);
    return draw(p, w->V, uniform(rng));
}

int glm_spec_draft(glm_spec_work *w, const glm_sampler_params *sp, uint64_t *rng, glm_ctx *ctx, int seq, int M,
                   const float *qlog, const float *g, int n, int32_t *d, float *q, float *dg, float *dlog,
                   int32_t *hist, int n_hist) {
    const int pen = has_penalty(sp);
    for (int j = 0; j < n; j++) {
        const float *lg = qlog;
        if (j > 0) {
            int rc = glm_ctx_mtp_forward(ctx, seq, M + j - 1, 1, &d[j - 1], j == 1 ? g : dg, dg, dlog);
            if (rc) return rc;
            lg = dlog;
        }
        d[j] = glm_spec_pick(w, sp, rng, glm_spec_penalised(w, sp, lg, hist, n_hist + j), q ? q + (size_t)j * w->V : w->p);
        if (pen) hist[n_hist + j] = d[j];
    }
    return GLM_OK;
}

int glm_spec_verify(glm_spec_work *w, const glm_sampler_params *sp, uint64_t *rng, glm_ctx *ctx, int row0,
                    const int32_t *d, const float *q, int n, const int32_t *hist, int n_hist, int32_t *next) {
    const int V = w->V;
    int k = 0;
    int32_t nt = -1;
    for (int j = 0; j < n && nt < 0; j++) {
        const float *lr = glm_ctx_logits(ctx, row0 + j);
        if (!lr) return GLM_ERR_ARG;
        const float *l = glm_spec_penalised(w, sp, lr, hist, n_hist + j);
        if (sp->temp <= 0) {
            const int32_t a = argmax(l, V);
            if (a == d[j]) k++;
            else nt = a;
        } else {
            int acc;
            dist(w, sp, l, w->p);
            const double u = uniform(rng), u2 = uniform(rng);
            const int32_t t = glm_spec_accept(w->p, q + (size_t)j * V, V, d[j], u, u2, &acc);
            if (acc) k++;
            else nt = t;
        }
    }
    if (nt < 0) {   /* every draft accepted: the bonus token */
        const float *lr = glm_ctx_logits(ctx, row0 + n);
        if (!lr) return GLM_ERR_ARG;
        nt = glm_spec_pick(w, sp, rng, glm_spec_penalised(w, sp, lr, hist, n_hist + n), w->p);
    }
    *next = nt;
    return k;
}

int32_t glm_spec_accept(const float *p, const float *q, int n, int32_t x, double u, double u2, int *accepted) {
    if (q[x] > 0 && u < (double)p[x] / q[x]) { *accepted = 1; return x; }
    *accepted = 0;
    double tot = 0, c = 0;
    for (int i = 0; i < n; i++) tot += p[i] > q[i] ? p[i] - q[i] : 0;
    if (!(tot > 0)) return draw(p, n, u2);   /* p == q up to rounding: any draw from p */
    u2 *= tot;
    int32_t last = x;
    for (int i = 0; i < n; i++) {
        double r = p[i] > q[i] ? p[i] - q[i] : 0;
        if (r <= 0) continue;
        c += r;
        last = i;
        if (u2 < c) return i;
    }
    return last;
}

int glm_spec_new(glm_ctx *ctx, int n_draft, const glm_sampler_params *sp, glm_spec **out) {
    *out = NULL;
    const glm_ctx_params *cp = glm_ctx_params_of(ctx);
    const glm_model *m = glm_ctx_model(ctx);
    if (!cp->mtp) return glm_err(GLM_ERR_ARG, "speculative decoding needs a context made with params.mtp = 1");
    if (n_draft < 1 || n_draft > GLM_SPEC_MAX_DRAFT)
        return glm_err(GLM_ERR_ARG, "draft length %d out of range [1, %d]", n_draft, GLM_SPEC_MAX_DRAFT);
    if (cp->n_batch < n_draft + 1)
        return glm_err(GLM_ERR_ARG, "n_batch %d is less than the %d rows a verify step needs", cp->n_batch, n_draft + 1);
    glm_sampler_params p = sp ? *sp : glm_sampler_default_params();
    glm_spec *s = calloc(1, sizeof *s);
    if (!s) return glm_err(GLM_ERR_OOM, "out of memory");
    s->ctx = ctx;
    s->m = m;
    s->n_draft = n_draft;
    s->V = m->hp.n_vocab;
    s->D = m->hp.n_embd;
    s->sp = p;
    s->rng = glm_spec_rng_init(p.seed);
    s->n_seq = cp->n_seq_max;
    s->cap_hid = cp->n_batch > n_draft + 1 ? cp->n_batch : n_draft + 1;
    s->seqs = calloc((size_t)s->n_seq, sizeof *s->seqs);
    s->hid = malloc((size_t)s->cap_hid * s->D * sizeof(float));
    s->q = malloc((size_t)n_draft * s->V * sizeof(float));
    s->dg = malloc((size_t)s->D * sizeof(float));
    s->dlog = malloc((size_t)s->V * sizeof(float));
    s->pen = has_penalty(&p);
    s->toks = malloc((size_t)(n_draft + 1) * sizeof(int32_t));
    s->want = malloc((size_t)(n_draft + 1));
    int ok = s->seqs && s->hid && s->q && s->dg && s->dlog && s->toks && s->want && !glm_spec_work_init(&s->w, s->V);
    for (int i = 0; ok && i < s->n_seq; i++) {
        s->seqs[i].qlog = malloc((size_t)s->V * sizeof(float));
        s->seqs[i].g = malloc((size_t)s->D * sizeof(float));
        ok = s->seqs[i].qlog && s->seqs[i].g;
    }
    if (!ok) { glm_spec_free(s); return glm_err(GLM_ERR_OOM, "out of memory"); }
    *out = s;
    return GLM_OK;
}

void glm_spec_free(glm_spec *s) {
    if (!s) return;
    for (int i = 0; s->seqs && i < s->n_seq; i++) { free(s->seqs[i].qlog); free(s->seqs[i].g); free(s->seqs[i].hist); }
    free(s->seqs);
    free(s->hid);
    free(s->q);
    free(s->dg);
    free(s->dlog);
    glm_spec_work_free(&s->w);
    free(s->toks);
    free(s->want);
    free(s);
}

/* The logits l after the penalties over seq's history followed by the n_d tokens written
 * after it (the drafts before the position): l itself when no penalty is on. */
static const float *penalised(glm_spec *s, const seq_state *q, const float *l, int n_d) {
    return glm_spec_penalised(&s->w, &s->sp, l, q->hist, q->n_hist + n_d);
}

/* Makes room for n tokens in seq's history (with penalties on). */
static int hist_reserve(glm_spec *s, seq_state *q, int n) {
    if (!s->pen || n <= q->cap_hist) return GLM_OK;
    int cap = q->cap_hist ? q->cap_hist : 64;
    while (cap < n) cap *= 2;
    int32_t *h = realloc(q->hist, (size_t)cap * sizeof *h);
    if (!h) return glm_err(GLM_ERR_OOM, "out of memory");
    q->hist = h;
    q->cap_hist = cap;
    return GLM_OK;
}

/* Takes the n tokens written after seq's history into it, keeping the last repeat_last_n
 * (the penalties' window; all with -1). */
static void hist_commit(glm_spec *s, seq_state *q, int n) {
    if (!s->pen) return;
    q->n_hist += n;
    const int w = s->sp.repeat_last_n;
    if (w >= 0 && q->n_hist > w) {
        memmove(q->hist, q->hist + (q->n_hist - w), (size_t)w * sizeof *q->hist);
        q->n_hist = w;
    }
}

/* Runs the MTP layer over positions pos0..pos0+n-1 of seq (tokens[n], hidden h[n, D]) in
 * passes of at most n_batch rows, leaving the last row's output in the sequence's state. */
static int mtp_catch_up(glm_spec *s, int seq, int pos0, int n, const int32_t *tokens, const float *h) {
    seq_state *q = &s->seqs[seq];
    const int nb = glm_ctx_params_of(s->ctx)->n_batch;
    for (int i = 0; i < n; i += nb) {
        const int k = n - i < nb ? n - i : nb;
        int rc = glm_ctx_mtp_forward(s->ctx, seq, pos0 + i, k, tokens + i, h + (size_t)i * s->D, q->g, q->qlog);
        if (rc) return rc;
    }
    return GLM_OK;
}

int glm_spec_seq_clear(glm_spec *s, int seq) {
    if (seq < 0 || seq >= s->n_seq) return glm_err(GLM_ERR_ARG, "sequence %d out of range [0, %d)", seq, s->n_seq);
    s->seqs[seq].active = 0;
    return glm_ctx_seq_clear(s->ctx, seq);
}

int glm_spec_prefill(glm_spec *s, int seq, const int32_t *prompt, int n, int32_t *first) {
    if (seq < 0 || seq >= s->n_seq) return glm_err(GLM_ERR_ARG, "sequence %d out of range [0, %d)", seq, s->n_seq);
    if (n < 1 || !prompt) return glm_err(GLM_ERR_ARG, "empty prompt");
    if (glm_ctx_seq_len(s->ctx, seq) || glm_ctx_mtp_len(s->ctx, seq))
        return glm_err(GLM_ERR_ARG, "sequence %d is not empty", seq);
    seq_state *q = &s->seqs[seq];
    q->active = 0;
    q->n_hist = 0;
    if (hist_reserve(s, q, n + 1)) return GLM_ERR_OOM;
    if (s->pen) memcpy(q->hist, prompt, (size_t)n * sizeof *prompt);
    const int nb = glm_ctx_params_of(s->ctx)->n_batch;
    int32_t *shifted = malloc((size_t)n * sizeof *shifted);
    if (!shifted) return glm_err(GLM_ERR_OOM, "out of memory");
    int rc = GLM_OK;
    /* the main model in passes of n_batch (hid holds one pass), each followed by the MTP
     * layer over the positions whose next token is known */
    for (int i = 0; i < n && !rc; i += nb) {
        const int k = n - i < nb ? n - i : nb;
        glm_batch b = { .n_tokens = k, .tokens = prompt + i, .seq = NULL, .logits = NULL };
        int32_t *sq = NULL;
        if (seq) {
            sq = malloc((size_t)k * sizeof *sq);
            if (!sq) { rc = glm_err(GLM_ERR_OOM, "out of memory"); break; }
            for (int t = 0; t < k; t++) sq[t] = seq;
            b.seq = sq;
        }
        rc = glm_ctx_decode_hidden(s->ctx, &b, s->hid);
        free(sq);
        if (rc) break;
        if (i + k == n) q->next = glm_spec_pick(&s->w, &s->sp, &s->rng, penalised(s, q, glm_ctx_logits(s->ctx, k - 1), n), s->w.p);
        for (int t = 0; t < k; t++) shifted[t] = i + t + 1 < n ? prompt[i + t + 1] : q->next;
        rc = mtp_catch_up(s, seq, i, k, shifted, s->hid);
    }
    free(shifted);
    if (rc) { glm_ctx_seq_clear(s->ctx, seq); return rc; }
    if (s->pen) q->hist[n] = q->next;
    hist_commit(s, q, n + 1);
    q->active = 1;
    *first = q->next;
    return GLM_OK;
}

int glm_spec_step(glm_spec *s, int seq, int32_t *out, int *n_out) {
    *n_out = 0;
    if (seq < 0 || seq >= s->n_seq || !s->seqs[seq].active)
        return glm_err(GLM_ERR_ARG, "sequence %d has no prefill (glm_spec_prefill first)", seq);
    seq_state *q = &s->seqs[seq];
    const int M = glm_ctx_seq_len(s->ctx, seq);
    const int n_ctx = glm_ctx_params_of(s->ctx)->n_ctx;
    if (M + 1 > n_ctx) return glm_err(GLM_WARN_KV_FULL, "sequence %d is full (%d tokens, context %d)", seq, M, n_ctx);
    int N = s->n_draft < n_ctx - M - 1 ? s->n_draft : n_ctx - M - 1;   /* drafts that fit the context */
    const uint64_t rng0 = s->rng;   /* restored when the step fails: a retry draws the same */
    int rc = hist_reserve(s, q, q->n_hist + N + 1);   /* d_j is written at hist[n_hist + j - 1] */
    if (rc) return rc;
    /* 1. draft d_1..d_N: q_j in s->q + (j-1)*V; d_1 from the sequence's qlog, the others
     * from the MTP layer's outputs in dg, dlog */
    s->toks[0] = q->next;
    rc = glm_spec_draft(&s->w, &s->sp, &s->rng, s->ctx, seq, M, q->qlog, q->g, N, s->toks + 1, s->q, s->dg, s->dlog,
                        q->hist, q->n_hist);
    if (rc) {   /* a draft step failed: give back what the drafts wrote; the state before stays */
        glm_ctx_seq_truncate(s->ctx, seq, M);
        s->rng = rng0;
        return rc;
    }
    /* 2. verify [t_M, d_1..d_N] */
    int32_t *sq = NULL;
    if (seq) {
        sq = malloc((size_t)(N + 1) * sizeof *sq);
        if (!sq) { glm_ctx_seq_truncate(s->ctx, seq, M); s->rng = rng0; return glm_err(GLM_ERR_OOM, "out of memory"); }
        for (int t = 0; t <= N; t++) sq[t] = seq;
    }
    memset(s->want, 1, (size_t)N + 1);
    glm_batch b = { .n_tokens = N + 1, .tokens = s->toks, .seq = sq, .logits = s->want };
    rc = glm_ctx_decode_hidden(s->ctx, &b, s->hid);
    free(sq);
    if (rc) { glm_ctx_seq_truncate(s->ctx, seq, M); s->rng = rng0; return rc; }
    /* 3. accept */
    int32_t nt;
    const int k = glm_spec_verify(&s->w, &s->sp, &s->rng, s->ctx, 0, s->toks + 1, s->q, N, q->hist, q->n_hist, &nt);
    if (k < 0) { glm_ctx_seq_truncate(s->ctx, seq, M); s->rng = rng0; return k; }
    s->st.steps++;
    s->st.drafted += (uint64_t)N;
    s->st.accepted += (uint64_t)k;
    s->st.emitted += (uint64_t)k + 1;
    /* 4. roll back the rejected drafts, then the MTP layer over positions M..M+k */
    if ((rc = glm_ctx_seq_truncate(s->ctx, seq, M + 1 + k))) return rc;
    for (int j = 0; j < k; j++) out[j] = s->toks[j + 1];
    out[k] = nt;
    *n_out = k + 1;
    q->next = nt;
    if (s->pen) q->hist[q->n_hist + k] = nt;   /* after the k accepted drafts already there */
    hist_commit(s, q, k + 1);
    rc = mtp_catch_up(s, seq, M, k + 1, out, s->hid);
    if (rc) q->active = 0;   /* the sequence's MTP state is gone: prefill again */
    return rc;
}

void glm_spec_get_stats(const glm_spec *s, glm_spec_stats *st) { *st = s->st; }
