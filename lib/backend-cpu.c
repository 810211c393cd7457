/* backend-cpu.c - the CPU backend: fp32 compute with weights dequantised on the fly
 * (one row at a time, reused across the batch's tokens), a paged fp32 KV cache, and
 * a small thread pool. It is the reference every other backend is checked against. */
#include "backend.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- thread pool ---- */
typedef void (*work_fn)(void *arg, int ith, int nth);

typedef struct {
    int n;                      /* threads including the caller */
    pthread_t *th;
    pthread_mutex_t mu;
    pthread_cond_t cv_go, cv_done;
    unsigned gen;
    int busy, stop;
    work_fn fn;
    void *arg;
} pool;

typedef struct { pool *p; int ith; } worker_arg;

static void *worker_main(void *a) {
    worker_arg *wa = a;
    pool *p = wa->p;
    int ith = wa->ith;
    free(wa);
    unsigned seen = 0;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (p->gen == seen && !p->stop) pthread_cond_wait(&p->cv_go, &p->mu);
        if (p->stop) { pthread_mutex_unlock(&p->mu); return NULL; }
        seen = p->gen;
        work_fn fn = p->fn;
        void *arg = p->arg;
        pthread_mutex_unlock(&p->mu);
        fn(arg, ith, p->n);
        pthread_mutex_lock(&p->mu);
        if (--p->busy == 0) pthread_cond_signal(&p->cv_done);
        pthread_mutex_unlock(&p->mu);
    }
}

/* Runs fn on all threads (the caller is thread 0) and waits for them. */
static void pool_run(pool *p, work_fn fn, void *arg) {
    if (p->n == 1) { fn(arg, 0, 1); return; }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->busy = p->n - 1;
    p->gen++;
    pthread_cond_broadcast(&p->cv_go);
    pthread_mutex_unlock(&p->mu);
    fn(arg, 0, p->n);
    pthread_mutex_lock(&p->mu);
    while (p->busy > 0) pthread_cond_wait(&p->cv_done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

static int pool_init(pool *p, int n) {
    memset(p, 0, sizeof *p);
    p->n = n < 1 ? 1 : n;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_go, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    p->th = calloc((size_t)p->n, sizeof *p->th);
    if (!p->th) return glm_err(GLM_ERR_OOM, "out of memory");
    for (int i = 1; i < p->n; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (!wa) return glm_err(GLM_ERR_OOM, "out of memory");
        wa->p = p;
        wa->ith = i;
        if (pthread_create(&p->th[i], NULL, worker_main, wa) != 0) {
            free(wa);
            p->n = i;
            break;
        }
    }
    return GLM_OK;
}

static void pool_free(pool *p) {
    if (!p->th) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv_go);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->th[i], NULL);
    free(p->th);
    p->th = NULL;
}

/* ---- state ---- */
#define LG_ROWS 16   /* tensor parallel: logits rows a gather */
typedef struct {
    pool pool;
    int64_t max_k;              /* widest row any weight has */
    float *scratch;             /* [n_threads, 2 * max_k] dequantised rows */
    int n_pages;
    float **k_cache, **v_cache; /* [n_layer] -> [n_pages * GLM_PAGE, KV] */
    glm_plan plan;              /* the current pass */
    /* MoE scratch: tokens gathered per expert */
    float *moe_x, *moe_act, *moe_y;   /* [T, D] [T, n_ff_exp] [T, D] */
    int32_t *moe_tok;                 /* [T * K] */
    float *moe_w;                     /* [T * K] */
    float *logit_x;                   /* [T, D] */
    /* tensor parallel: this rank's logits [T, Vr] and the gather, LG_ROWS rows a
     * collective: sent [LG_ROWS, Vmax] (Vmax = ceil(V / N), the same count from every
     * rank), received [N, LG_ROWS, Vmax] */
    float *lg, *lg_send, *lg_recv;
    void **allocs;
    size_t n_allocs;
} cpu_state;

static cpu_state *S(glm_backend *be) { return be->impl; }

typedef float v8f __attribute__((vector_size(32)));

/* Returns sum a[i]*b[i] for i < n, with eight-wide partial sums. */
static float dot(const float *a, const float *b, int64_t n) {
    v8f s0 = {0}, s1 = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        v8f a0, a1, b0, b1;
        memcpy(&a0, a + i, 32); memcpy(&a1, a + i + 8, 32);
        memcpy(&b0, b + i, 32); memcpy(&b1, b + i + 8, 32);
        s0 += a0 * b0;
        s1 += a1 * b1;
    }
    s0 += s1;
    float s = 0;
    for (int k = 0; k < 8; k++) s += s0[k];
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static void chunk(int64_t n, int ith, int nth, int64_t *b, int64_t *e) {
    *b = n * ith / nth;
    *e = n * (ith + 1) / nth;
}

/* ---- ops ---- */
static void *cpu_alloc(glm_backend *be, size_t n) {
    cpu_state *s = S(be);
    void **na = realloc(s->allocs, (s->n_allocs + 1) * sizeof *na);
    if (!na) return NULL;
    s->allocs = na;
    void *p = calloc(1, n ? n : 1);
    if (p) s->allocs[s->n_allocs++] = p;
    return p;
}

static int cpu_load(glm_backend *be, glm_model *m) {
    cpu_state *s = S(be);
    const glm_hparams *hp = &m->hp;
    if (!m->tok_embd.data)
        return glm_err(GLM_ERR_ARG, "the CPU backend needs host weights (this synthetic model has none)");
    int64_t k = hp->n_embd;
    if ((int64_t)hp->n_head * hp->head_dim > k) k = (int64_t)hp->n_head * hp->head_dim;
    if (hp->n_ff > k) k = hp->n_ff;
    if ((int64_t)hp->n_ff_exp * (hp->n_expert_shared > 1 ? hp->n_expert_shared : 1) > k) k = (int64_t)hp->n_ff_exp * hp->n_expert_shared;
    s->max_k = k;
    s->scratch = malloc((size_t)s->pool.n * 2 * (size_t)k * sizeof(float));
    if (!s->scratch) return glm_err(GLM_ERR_OOM, "out of memory");
    return GLM_OK;
}

/* Pages for n_seq_max full sequences, in 64 bits; INT32_MAX when more (glm_ctx_new refuses those). */
static int cpu_kv_pages_fit(glm_backend *be, const glm_ctx_params *p) {
    (void)be;
    const int64_t pages = (int64_t)p->n_seq_max * (((int64_t)p->n_ctx + GLM_PAGE - 1) / GLM_PAGE);
    return pages > INT32_MAX ? INT32_MAX : (int)pages;
}

/* Layers with a KV cache: the model's, plus its MTP layer when the context asks for it. */
static int kv_layers(const glm_backend *be) { return be->model->hp.n_layer + (be->params.mtp ? 1 : 0); }

static int cpu_kv_init(glm_backend *be, int n_pages, glm_kv_type type) {
    cpu_state *s = S(be);
    const glm_hparams *hp = &be->model->hp;
    (void)type; /* the reference keeps fp32 */
    size_t per = (size_t)n_pages * GLM_PAGE * hp->n_head_kv * hp->head_dim;
    const int n_kv = kv_layers(be);
    s->k_cache = calloc((size_t)n_kv, sizeof(float *));
    s->v_cache = calloc((size_t)n_kv, sizeof(float *));
    if (!s->k_cache || !s->v_cache) return glm_err(GLM_ERR_OOM, "out of memory");
    for (int il = 0; il < n_kv; il++) {
        s->k_cache[il] = malloc(per * sizeof(float));
        s->v_cache[il] = malloc(per * sizeof(float));
        if (!s->k_cache[il] || !s->v_cache[il])
            return glm_err(GLM_ERR_OOM, "out of memory for the KV cache (%d pages, %.1f MiB)", n_pages,
                           2.0 * n_kv * per * 4 / 1048576.0);
    }
    s->n_pages = n_pages;
    be->kv_bytes = 2 * (uint64_t)n_kv * per * sizeof(float);
    return GLM_OK;
}

static int cpu_reserve(glm_backend *be, int T) {
    cpu_state *s = S(be);
    const glm_hparams *hp = &be->model->hp;
    size_t D = (size_t)hp->n_embd, K = (size_t)(hp->n_expert_used > 0 ? hp->n_expert_used : 1);
    s->moe_x = cpu_alloc(be, (size_t)T * D * 4);
    s->moe_act = cpu_alloc(be, (size_t)T * (size_t)(hp->n_ff_exp > 0 ? hp->n_ff_exp : 1) * 4);
    s->moe_y = cpu_alloc(be, (size_t)T * D * 4);
    s->moe_tok = cpu_alloc(be, (size_t)T * K * 4);
    s->moe_w = cpu_alloc(be, (size_t)T * K * 4);
    s->logit_x = cpu_alloc(be, (size_t)T * D * 4);
    if (!s->moe_x || !s->moe_act || !s->moe_y || !s->moe_tok || !s->moe_w || !s->logit_x)
        return glm_err(GLM_ERR_OOM, "out of memory");
    if (be->comm) {
        size_t N = (size_t)glm_comm_size(be->comm), Vmax = ((size_t)hp->n_vocab + N - 1) / N;
        s->lg = cpu_alloc(be, (size_t)T * Vmax * 4);
        s->lg_send = cpu_alloc(be, LG_ROWS * Vmax * 4);
        s->lg_recv = cpu_alloc(be, N * LG_ROWS * Vmax * 4);
        if (!s->lg || !s->lg_send || !s->lg_recv)
            return glm_err(GLM_ERR_OOM, "out of memory reserving the logits gather for %d tokens", T);
    }
    return GLM_OK;
}

static int cpu_begin(glm_backend *be, const glm_plan *p) {
    S(be)->plan = *p;
    return GLM_OK;
}

static int cpu_embed(glm_backend *be, float *x) {
    const glm_plan *p = &S(be)->plan;
    const glm_weight *e = &be->model->tok_embd;
    for (int t = 0; t < p->n_tokens; t++) {
        if (p->tokens[t] < 0 || p->tokens[t] >= e->rows)
            return glm_err(GLM_ERR_ARG, "token id %d out of range [0, %lld)", p->tokens[t], (long long)e->rows);
        glm_weight_row(e, p->tokens[t], x + (size_t)t * e->cols);
    }
    return GLM_OK;
}

/* out[dim] = x / sqrt(mean(x^2) + eps) * w */
static void rmsnorm_row(const float *x, const glm_weight *w, float *out, int64_t dim, float eps) {
    double ss = 0;
    for (int64_t i = 0; i < dim; i++) ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / (double)dim + eps));
    for (int64_t i = 0; i < dim; i++) out[i] = x[i] * r * glm_weight_get1(w, i);
}

static int cpu_rmsnorm(glm_backend *be, const float *x, const glm_weight *w, float *out, int rows) {
    const int64_t D = w->cols;
    for (int r = 0; r < rows; r++) rmsnorm_row(x + r * D, w, out + r * D, D, be->model->hp.rms_eps);
    return GLM_OK;
}

typedef struct {
    cpu_state *s;
    const glm_weight *w, *w2, *bias;
    const float *x;
    float *y;
    int T;
} lin_job;

/* y[t, r] = dot(W[r], x[t]) (+ bias[r]) for this thread's rows. */
static void linear_work(void *a, int ith, int nth) {
    lin_job *j = a;
    const int64_t N = j->w->rows, K = j->w->cols;
    float *row = j->s->scratch + (size_t)ith * 2 * j->s->max_k;
    int64_t r0, r1;
    chunk(N, ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        glm_weight_row(j->w, r, row);
        float b = j->bias ? glm_weight_get1(j->bias, r) : 0.0f;
        for (int t = 0; t < j->T; t++) j->y[(size_t)t * N + r] = dot(row, j->x + (size_t)t * K, K) + b;
    }
}

static int cpu_linear(glm_backend *be, const glm_weight *w, const glm_weight *bias, const float *x, float *y, int T) {
    lin_job j = { S(be), w, NULL, bias, x, y, T };
    pool_run(&S(be)->pool, linear_work, &j);
    return GLM_OK;
}

static float silu(float v) { return v / (1.0f + expf(-v)); }

/* y[t, r] = silu(dot(Wg[r], x[t])) * dot(Wu[r], x[t]) for this thread's rows. */
static void glu_work(void *a, int ith, int nth) {
    lin_job *j = a;
    const int64_t N = j->w->rows, K = j->w->cols;
    float *g = j->s->scratch + (size_t)ith * 2 * j->s->max_k, *u = g + j->s->max_k;
    int64_t r0, r1;
    chunk(N, ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        glm_weight_row(j->w, r, g);
        glm_weight_row(j->w2, r, u);
        for (int t = 0; t < j->T; t++) {
            const float *xt = j->x + (size_t)t * K;
            j->y[(size_t)t * N + r] = silu(dot(g, xt, K)) * dot(u, xt, K);
        }
    }
}

static int cpu_glu(glm_backend *be, const glm_weight *gate, const glm_weight *up, const float *x, float *y, int T) {
    lin_job j = { S(be), gate, up, NULL, x, y, T };
    pool_run(&S(be)->pool, glu_work, &j);
    return GLM_OK;
}

/* Applies NeoX-style rotary embedding to the first n_rot dims of v at position pos. */
static void rope(float *v, int n_rot, int pos, float theta) {
    int half = n_rot / 2;
    for (int i = 0; i < half; i++) {
        double freq = pow((double)theta, -2.0 * i / n_rot);
        double ang = pos * freq;
        float c = (float)cos(ang), s = (float)sin(ang);
        float x0 = v[i], x1 = v[i + half];
        v[i] = x0 * c - x1 * s;
        v[i + half] = x1 * c + x0 * s;
    }
}

typedef struct {
    glm_backend *be;
    int il;
    const float *q;
    float *out;
} attn_job;

/* Causal attention of (token, head) pairs assigned to this thread over the paged cache. */
static void attn_work(void *a, int ith, int nth) {
    attn_job *j = a;
    cpu_state *s = S(j->be);
    const glm_hparams *hp = &j->be->model->hp;
    const glm_plan *p = &s->plan;
    const int hd = hp->head_dim, H = hp->n_head, G = hp->n_head / hp->n_head_kv, KVD = hp->n_head_kv * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    float *sc = s->scratch + (size_t)ith * 2 * s->max_k; /* reused as a score buffer chunk */
    int64_t b, e;
    chunk((int64_t)p->n_tokens * H, ith, nth, &b, &e);
    for (int64_t it = b; it < e; it++) {
        int t = (int)(it / H), h = (int)(it % H), g = h / G;
        const float *qt = j->q + ((size_t)t * H + h) * hd;
        const int32_t *pt = p->page_table + (size_t)p->seq[t] * p->max_pages;
        int n = p->pos[t] + 1;
        float *o = j->out + ((size_t)t * H + h) * hd;
        /* online softmax over the cache, in chunks that fit the scratch row */
        float mx = -INFINITY, sum = 0;
        for (int d = 0; d < hd; d++) o[d] = 0;
        int cap = (int)(2 * s->max_k);
        for (int c0 = 0; c0 < n; c0 += cap) {
            int c1 = c0 + cap < n ? c0 + cap : n;
            float cmx = -INFINITY;
            for (int i = c0; i < c1; i++) {
                size_t slot = (size_t)pt[i / GLM_PAGE] * GLM_PAGE + i % GLM_PAGE;
                float v = dot(qt, s->k_cache[j->il] + slot * KVD + (size_t)g * hd, hd) * scale;
                sc[i - c0] = v;
                if (v > cmx) cmx = v;
            }
            float nmx = cmx > mx ? cmx : mx;
            float corr = expf(mx - nmx);
            sum *= corr;
            for (int d = 0; d < hd; d++) o[d] *= corr;
            for (int i = c0; i < c1; i++) {
                size_t slot = (size_t)pt[i / GLM_PAGE] * GLM_PAGE + i % GLM_PAGE;
                float pr = expf(sc[i - c0] - nmx);
                sum += pr;
                const float *vv = s->v_cache[j->il] + slot * KVD + (size_t)g * hd;
                for (int d = 0; d < hd; d++) o[d] += pr * vv[d];
            }
            mx = nmx;
        }
        for (int d = 0; d < hd; d++) o[d] /= sum;
    }
}

static int cpu_attention(glm_backend *be, int il, float *q, float *k, const float *v, float *out) {
    cpu_state *s = S(be);
    const glm_hparams *hp = &be->model->hp;
    const glm_layer *L = &be->model->layers[il];
    const glm_plan *p = &s->plan;
    const int hd = hp->head_dim, KVD = hp->n_head_kv * hd;
    for (int t = 0; t < p->n_tokens; t++) {
        for (int h = 0; h < hp->n_head; h++) {
            float *qh = q + ((size_t)t * hp->n_head + h) * hd;
            if (hp->use_qk_norm) rmsnorm_row(qh, &L->q_norm, qh, hd, hp->rms_eps);
            rope(qh, hp->n_rot, p->pos[t], hp->rope_theta);
        }
        for (int h = 0; h < hp->n_head_kv; h++) {
            float *kh = k + ((size_t)t * hp->n_head_kv + h) * hd;
            if (hp->use_qk_norm) rmsnorm_row(kh, &L->k_norm, kh, hd, hp->rms_eps);
            rope(kh, hp->n_rot, p->pos[t], hp->rope_theta);
        }
        int page = p->page_table[(size_t)p->seq[t] * p->max_pages + p->pos[t] / GLM_PAGE];
        if (page < 0 || page >= s->n_pages) return glm_err(GLM_ERR_ARG, "token %d has no KV page", t);
        size_t slot = (size_t)page * GLM_PAGE + p->pos[t] % GLM_PAGE;
        memcpy(s->k_cache[il] + slot * KVD, k + (size_t)t * KVD, (size_t)KVD * 4);
        memcpy(s->v_cache[il] + slot * KVD, v + (size_t)t * KVD, (size_t)KVD * 4);
    }
    attn_job j = { be, il, q, out };
    pool_run(&s->pool, attn_work, &j);
    return GLM_OK;
}

static int cpu_moe_route(glm_backend *be, int il, const float *h, int32_t *ids, float *w) {
    const glm_hparams *hp = &be->model->hp;
    const glm_layer *L = &be->model->layers[il];
    const int E = hp->n_expert, K = hp->n_expert_used, D = hp->n_embd, T = S(be)->plan.n_tokens;
    float *scores = malloc((size_t)E * T * sizeof(float));
    float *choice = malloc((size_t)E * sizeof(float));
    if (!scores || !choice) { free(scores); free(choice); return glm_err(GLM_ERR_OOM, "out of memory"); }
    /* logits of all tokens against the router, one dequantised row at a time */
    lin_job j = { S(be), &L->router, NULL, NULL, h, scores, T };
    pool_run(&S(be)->pool, linear_work, &j);
    (void)D;
    for (int t = 0; t < T; t++) {
        float *sc = scores + (size_t)t * E;
        for (int e = 0; e < E; e++) {
            sc[e] = 1.0f / (1.0f + expf(-sc[e]));
            choice[e] = sc[e] + glm_weight_get1(&L->router_bias, e);
        }
        float sum = 0;
        for (int k = 0; k < K; k++) {
            int best = -1;
            for (int e = 0; e < E; e++)
                if (choice[e] != -INFINITY && (best < 0 || choice[e] > choice[best])) best = e;
            choice[best] = -INFINITY;
            ids[t * K + k] = best;
            w[t * K + k] = sc[best];
            sum += sc[best];
        }
        for (int k = 0; k < K; k++) {
            if (hp->norm_topk_prob) w[t * K + k] /= sum + 1e-20f;
            w[t * K + k] *= hp->routed_scale;
        }
    }
    free(scores);
    free(choice);
    return GLM_OK;
}

static int cpu_moe_experts(glm_backend *be, int il, const float *h, const int32_t *ids, const float *w, float *out,
                           int *with_shared) {
    cpu_state *s = S(be);
    *with_shared = 0;
    const glm_hparams *hp = &be->model->hp;
    const glm_layer *L = &be->model->layers[il];
    const int K = hp->n_expert_used, D = hp->n_embd, T = s->plan.n_tokens;
    memset(out, 0, (size_t)T * D * sizeof(float));
    for (int e = 0; e < hp->n_expert; e++) {
        if (!L->exp_gate[e].rows) continue;   /* tensor parallel: held by another rank */
        /* gather the tokens routed to expert e */
        int n = 0;
        for (int i = 0; i < T * K; i++) {
            if (ids[i] != e) continue;
            s->moe_tok[n] = i / K;
            s->moe_w[n] = w[i];
            memcpy(s->moe_x + (size_t)n * D, h + (size_t)(i / K) * D, (size_t)D * 4);
            n++;
        }
        if (!n) continue;
        cpu_glu(be, &L->exp_gate[e], &L->exp_up[e], s->moe_x, s->moe_act, n);   /* [n, F] */
        cpu_linear(be, &L->exp_down[e], NULL, s->moe_act, s->moe_y, n);        /* [n, D] */
        for (int i = 0; i < n; i++) {
            float *o = out + (size_t)s->moe_tok[i] * D;
            const float *y = s->moe_y + (size_t)i * D;
            for (int d = 0; d < D; d++) o[d] += s->moe_w[i] * y[d];
        }
    }
    return GLM_OK;
}

static int cpu_add(glm_backend *be, float *x, const float *y, size_t n) {
    (void)be;
    for (size_t i = 0; i < n; i++) x[i] += y[i];
    return GLM_OK;
}

static int cpu_all_reduce(glm_backend *be, float *x, size_t n) {
    return glm_comm_all_reduce(be->comm, x, n, GLM_COMM_F32, NULL);
}

static int cpu_logits(glm_backend *be, const float *x, float *logits_host) {
    cpu_state *s = S(be);
    const glm_model *m = be->model;
    const int D = m->hp.n_embd;
    const glm_plan *p = &s->plan;
    for (int i = 0; i < p->n_out; i++)
        rmsnorm_row(x + (size_t)p->out_rows[i] * D, &m->out_norm, s->logit_x + (size_t)i * D, D, m->hp.rms_eps);
    if (!be->comm) return cpu_linear(be, &m->lm_head, NULL, s->logit_x, logits_host, p->n_out);
    /* tensor parallel: this rank's vocabulary rows, gathered in rank order */
    const int N = glm_comm_size(be->comm), V = m->hp.n_vocab, n_out = p->n_out;
    const size_t Vmax = ((size_t)V + N - 1) / N, Vr = (size_t)m->lm_head.rows;
    int rc = cpu_linear(be, &m->lm_head, NULL, s->logit_x, s->lg, n_out);          /* [n_out, Vr] */
    for (int i0 = 0; !rc && i0 < n_out; i0 += LG_ROWS) {
        const int n = n_out - i0 < LG_ROWS ? n_out - i0 : LG_ROWS;
        memcpy(s->lg_send, s->lg + (size_t)i0 * Vr, (size_t)n * Vr * 4);         /* sent as [n, Vr] */
        rc = glm_comm_all_gather(be->comm, s->lg_send, s->lg_recv, (size_t)n * Vmax, GLM_COMM_F32, NULL); /* [N, n, Vmax] */
        for (int q = 0; !rc && logits_host && q < N; q++) {                    /* rank q's rows [v0, v1) */
            const size_t v0 = (size_t)glm_tp_part(V, q, N), v1 = (size_t)glm_tp_part(V, q + 1, N);
            for (int i = 0; i < n; i++)
                memcpy(logits_host + (size_t)(i0 + i) * V + v0, s->lg_recv + (size_t)q * n * Vmax + (size_t)i * (v1 - v0),
                       (v1 - v0) * 4);
        }
    }
    return rc;
}

/* Host and backend buffers are the same memory on the CPU. */
static int cpu_read(glm_backend *be, float *host, const float *src, size_t n) {
    (void)be;
    memcpy(host, src, n * sizeof(float));
    return GLM_OK;
}

static int cpu_write(glm_backend *be, float *dst, const float *host, size_t n) {
    (void)be;
    memcpy(dst, host, n * sizeof(float));
    return GLM_OK;
}

static void cpu_destroy(glm_backend *be) {
    cpu_state *s = S(be);
    if (s) {
        pool_free(&s->pool);
        if (s->k_cache)
            for (int il = 0; il < kv_layers(be); il++) free(s->k_cache[il]);
        if (s->v_cache)
            for (int il = 0; il < kv_layers(be); il++) free(s->v_cache[il]);
        free(s->k_cache);
        free(s->v_cache);
        for (size_t i = 0; i < s->n_allocs; i++) free(s->allocs[i]);
        free(s->allocs);
        free(s->scratch);
        free(s);
    }
    free(be);
}

static const glm_backend_ops cpu_ops = {
    .name = "cpu",
    .load = cpu_load,
    .kv_pages_fit = cpu_kv_pages_fit,
    .kv_init = cpu_kv_init,
    .reserve = cpu_reserve,
    .alloc = cpu_alloc,
    .begin = cpu_begin,
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .linear = cpu_linear,
    .glu = cpu_glu,
    .attention = cpu_attention,
    .moe_route = cpu_moe_route,
    .moe_experts = cpu_moe_experts,
    .add = cpu_add,
    .all_reduce = cpu_all_reduce,
    .logits = cpu_logits,
    .destroy = cpu_destroy,
    .read = cpu_read,
    .write = cpu_write,
};

int glm_backend_cpu_new(glm_model *model, const glm_ctx_params *p, glm_backend **out) {
    *out = NULL;
    glm_backend *be = calloc(1, sizeof *be);
    cpu_state *s = calloc(1, sizeof *s);
    if (!be || !s) { free(be); free(s); return glm_err(GLM_ERR_OOM, "out of memory"); }
    be->ops = &cpu_ops;
    be->model = model;
    be->params = *p;
    be->impl = s;
    int n = p->n_threads > 0 ? p->n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    int rc = pool_init(&s->pool, n > 0 ? n : 1);
    if (!rc) rc = cpu_load(be, model);
    if (rc) { cpu_destroy(be); return rc; }
    *out = be;
    return GLM_OK;
}
