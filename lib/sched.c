/* sched.c - continuous batching over one context (see the scheduler section of glm.h).
 *
 * A request holds its tokens (prompt, then what it generated) and how many of them are in
 * its sequence's KV cache (n_done). Each step gives every running request the tokens it
 * still has to feed, decoding requests first (one token each), then prompt chunks in
 * arrival order, under the budget batch_tokens; a request whose tokens are then all in
 * the cache gets its next token sampled (sample_batch, the one place sampling happens,
 * over the whole batch). A preempted request starts again from n_done = 0 with the tokens
 * it already has: recomputing them gives the same cache, and its sampler keeps its state,
 * so its output does not change.
 *
 * Prefix cache: page i of a sequence is known by the hash of all its tokens up to the end
 * of page i (chained: h_i = H(h_{i-1}, tokens of page i)); an open-addressing table maps
 * the hash to the physical page, which the cache holds one reference to. The cached pages
 * no sequence holds are kept in a list by the time they were last held, the least
 * recently used first: reclaiming takes its head.
 *
 * Speculative decoding (params.n_draft): the MTP layer follows every request's cache (each
 * step runs it over the positions the step made final, with the main model's hidden
 * states), so that the next draft is ready; a step then drafts up to n_draft tokens for
 * each decoding request (one MTP pass a draft, a request at a time) with the pages and
 * budget left after the plain plan (drafts never preempt), feeds each request's last
 * token and its drafts in the step's one batch with every row's logits, accepts by
 * glm_spec's rules (lib/internal.h: glm_spec_draft, glm_spec_verify) with the request's
 * own parameters and generator, cuts the cache back past the rejected drafts, and gives
 * the accepted tokens and the correction (or bonus) token out one at a time through
 * accept_token, whose stop strings, eos and max_tokens end a run where they end plain
 * decoding. The drafts are written into the request's token array past n_tok (scratch:
 * room for them is kept by never drafting past max_tokens). A request drafts only while
 * the MTP layer has all its cached positions (glm_ctx_mtp_len equal to n_done). The prefix
 * cache keeps, with each page, whether its MTP rows were written and the token after the
 * page they were made with (its last row's); with drafting on, a request takes cached
 * pages only as far as their MTP rows are its own, so it drafts from its first step.
 * With drafting on, every pick goes through glm_spec's rules on the host (sample_batch
 * and its device path are not used). */
#include "backend.h"
#include "scheduler.h"

#include <stdlib.h>
#include <string.h>

#define PAGE 16

typedef struct req {
    int64_t id;
    uint64_t arrival;          /* submission order: the newest running request is preempted */
    int slot;                  /* context sequence, -1 while waiting */
    int32_t *tok;              /* [cap] prompt then generated tokens */
    int n_tok, cap, n_prompt, n_gen, max_tokens;
    int n_done;                /* tokens in the KV cache */
    int n_registered;          /* full pages offered to the prefix cache */
    int n_cached;              /* prompt tokens found in the prefix cache at first admission */
    int admitted;              /* admitted once (statistics count the prompt once) */
    uint64_t *ph;              /* [cap / PAGE] chained page hashes, n_hashed of them known */
    int n_hashed;
    int ignore_eos;
    glm_sampler *smp;
    glm_sampler_params sp;     /* its parameters (sampling on the device) */
    char **stop;
    int n_stop;
    size_t max_stop;           /* longest stop string */
    glm_detok_stream *ds;
    char *text;                /* generated text not yet given out beyond `emitted` */
    size_t text_len, text_cap, emitted;
    glm_sched_fn cb;
    void *user;
    int chunk;                 /* tokens fed this step (its drafts included) */
    struct req *next;          /* waiting list */
    /* speculative decoding (n_draft) */
    uint64_t rng;              /* the generator of its picks (seeded with sp.seed) */
    float *q;                  /* [n_draft, V] its draft distributions (sampling only) */
    int n_dr;                  /* drafts fed this step */
    int mtp_ok;                /* the MTP layer has seen every cached position */
    int row0;                  /* its first batch row this step */
    int n_acc;                 /* tokens of this step to give out: accepted drafts + 1, 0 = none */
} req;

typedef struct {
    uint64_t hash, parent;     /* 0 hash = empty slot */
    int32_t page;
    int32_t toks[PAGE];
    int mtp;                   /* the MTP layer's rows of the page are written, its last one
                                  with the token mtp_next after the page */
    int32_t mtp_next;
} centry;

struct glm_sched {
    glm_ctx *ctx;
    glm_sched_params p;
    const glm_hparams *hp;
    int n_slots, n_ctx, budget;
    req **slot;                /* [n_slots] running request of each sequence, or NULL */
    req *wait_head;            /* waiting, by arrival */
    int n_wait;
    int64_t next_id;
    uint64_t next_arrival;
    centry *cache;             /* [cache_cap], power of two */
    size_t cache_cap, cache_n;
    uint64_t *page_key;        /* [kv pages] the cache's hash of a cached page, 0 = not cached */
    int32_t *lru_prev, *lru_next;  /* [kv pages] the list of cached pages no sequence holds */
    int32_t lru_head, lru_tail;    /* (reference count 1), least recently held first; -1 = none */
    int n_cache_only;          /* pages in that list */
    glm_sched_stats st;
    int step_prefill;          /* the step fed a prompt chunk */
    /* per step */
    int32_t *b_tok, *b_seq;
    int8_t *b_logits;
    req **b_req;               /* [n_slots] requests in this step's batch */
    req **order;               /* [n_slots] running requests by arrival */
    req **s_req;               /* [n_slots] requests sampled this step */
    int32_t *s_rows;           /* [n_slots] their batch rows */
    int32_t *s_out;
    /* sampling on the context's device (glm_ctx_sample), when it can and host_sampling is 0 */
    int dev;
    glm_sampler_params *s_par; /* [n_slots] */
    uint64_t *s_step;
    const int32_t **s_hist;
    int *s_nhist;
    /* speculative decoding (n_draft) */
    glm_spec_work w;
    float *hid;                /* [budget, D] the step's hidden states */
    float *mq, *mg;            /* [n_slots, V], [n_slots, D] each slot's MTP logits and hidden state */
    float *dg, *dlog;          /* [D], [V] drafting scratch */
};

/* ---- hashing ---- */

/* The chained hash of a page: its parent's hash and its 16 tokens (never 0). */
static uint64_t page_hash(uint64_t parent, const int32_t *t) {
    uint64_t h = parent ^ 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < PAGE; i++) {
        h ^= (uint64_t)(uint32_t)t[i];
        h *= 0x100000001b3ull;
        h ^= h >> 29;
        h *= 0xbf58476d1ce4e5b9ull;
        h ^= h >> 32;
    }
    return h ? h : 1;
}

/* The chained hash of page i of r (computed up to it on first use). */
static uint64_t req_page_hash(req *r, int i) {
    while (r->n_hashed <= i) {
        int k = r->n_hashed;
        r->ph[k] = page_hash(k ? r->ph[k - 1] : 0, r->tok + (size_t)k * PAGE);
        r->n_hashed++;
    }
    return r->ph[i];
}

/* The table slot of hash h, or the empty slot where it would go. */
static size_t cache_find(const glm_sched *s, uint64_t h) {
    size_t m = s->cache_cap - 1, i = (size_t)h & m;
    while (s->cache[i].hash && s->cache[i].hash != h) i = (i + 1) & m;
    return i;
}

/* The cached page holding r's page i (same chained hash, parent and tokens), or -1; with
 * drafting, only one whose MTP rows are r's too (written, the last with r's next token). */
static int32_t cache_lookup(glm_sched *s, req *r, int i) {
    uint64_t h = req_page_hash(r, i), parent = i ? r->ph[i - 1] : 0;
    centry *e = &s->cache[cache_find(s, h)];
    if (!e->hash || e->parent != parent || memcmp(e->toks, r->tok + (size_t)i * PAGE, sizeof e->toks)) return -1;
    if (s->p.n_draft && (!e->mtp || (i + 1) * PAGE >= r->n_tok || e->mtp_next != r->tok[(size_t)(i + 1) * PAGE])) return -1;
    return e->page;
}

/* Appends a cached page that no sequence holds any more to the LRU list. */
static void lru_push(glm_sched *s, int32_t page) {
    s->lru_prev[page] = s->lru_tail;
    s->lru_next[page] = -1;
    if (s->lru_tail >= 0) s->lru_next[s->lru_tail] = page; else s->lru_head = page;
    s->lru_tail = page;
    s->n_cache_only++;
}

/* Takes a page out of the LRU list (a sequence holds it again, or it leaves the cache). */
static void lru_unlink(glm_sched *s, int32_t page) {
    const int32_t p = s->lru_prev[page], n = s->lru_next[page];
    if (p >= 0) s->lru_next[p] = n; else s->lru_head = n;
    if (n >= 0) s->lru_prev[n] = p; else s->lru_tail = p;
    s->n_cache_only--;
}

/* Removes the entry at table slot i (backward-shift deletion) and drops its page. */
static void cache_remove(glm_sched *s, size_t i) {
    size_t m = s->cache_cap - 1;
    const int32_t page = s->cache[i].page;
    if (glm_ctx_page_refs(s->ctx, page) == 1) lru_unlink(s, page);
    s->page_key[page] = 0;
    glm_ctx_page_release(s->ctx, page);
    s->cache[i].hash = 0;
    s->cache_n--;
    for (size_t j = (i + 1) & m; s->cache[j].hash; j = (j + 1) & m) {
        size_t home = (size_t)s->cache[j].hash & m;
        /* move j into the hole i when its home is not in (i, j] cyclically */
        if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
            s->cache[i] = s->cache[j];
            s->cache[j].hash = 0;
            i = j;
        }
    }
}

/* Offers r's pages that became full to the cache. */
static void cache_register(glm_sched *s, req *r) {
    if (!s->p.prefix_cache) { r->n_registered = r->n_done / PAGE; return; }
    for (; r->n_registered < r->n_done / PAGE; r->n_registered++) {
        int i = r->n_registered;
        uint64_t h = req_page_hash(r, i);
        size_t k = cache_find(s, h);
        if (s->cache[k].hash) continue;  /* another request cached the same page first */
        centry *e = &s->cache[k];
        e->hash = h;
        e->parent = i ? r->ph[i - 1] : 0;
        e->page = glm_ctx_seq_page(s->ctx, r->slot, i);
        memcpy(e->toks, r->tok + (size_t)i * PAGE, sizeof e->toks);
        e->mtp = s->p.n_draft && glm_ctx_mtp_len(s->ctx, r->slot) >= (i + 1) * PAGE && r->n_tok > (i + 1) * PAGE;
        e->mtp_next = e->mtp ? r->tok[(size_t)(i + 1) * PAGE] : -1;
        glm_ctx_page_retain(s->ctx, e->page);
        s->page_key[e->page] = h;
        s->cache_n++;
    }
}

/* Cached pages that only the cache holds. */
static int cache_only_pages(const glm_sched *s) { return s->n_cache_only; }

/* Frees the least recently used page only the cache holds; 0 when there is none. */
static int cache_reclaim_one(glm_sched *s) {
    if (s->lru_head < 0) return 0;
    cache_remove(s, cache_find(s, s->page_key[s->lru_head]));
    return 1;
}

int glm_sched_cache_clear(glm_sched *s) {
    int n = 0;
    while (cache_reclaim_one(s)) n++;
    return n;
}

/* ---- requests ---- */

static int pages_for(int64_t n) { return (int)((n + PAGE - 1) / PAGE); }

/* Frees a request and everything it owns (NULL is fine). */
static void req_free(req *r) {
    if (!r) return;
    free(r->tok);
    free(r->ph);
    glm_sampler_free(r->smp);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->stop);
    glm_detok_stream_free(r->ds);
    free(r->text);
    free(r->q);
    free(r);
}

glm_sched_params glm_sched_default_params(void) {
    glm_sched_params p = {0};
    p.prefix_cache = 1;
    return p;
}

int glm_sched_new(glm_ctx *ctx, const glm_sched_params *params, glm_sched **out) {
    *out = NULL;
    glm_sched_params p = params ? *params : glm_sched_default_params();
    const glm_ctx_params *cp = glm_ctx_params_of(ctx);
    if (p.batch_tokens < 0) return glm_err(GLM_ERR_ARG, "batch_tokens %d is negative", p.batch_tokens);
    if (p.n_draft < 0 || p.n_draft > GLM_SPEC_MAX_DRAFT)
        return glm_err(GLM_ERR_ARG, "n_draft %d out of range [0, %d]", p.n_draft, GLM_SPEC_MAX_DRAFT);
    if (p.n_draft && (!cp->mtp || !glm_model_has_mtp(glm_ctx_model(ctx))))
        return glm_err(GLM_ERR_ARG, "drafting (n_draft %d) needs a context made with params.mtp = 1 on a model with the MTP layer", p.n_draft);
    for (int i = 0; i < cp->n_seq_max; i++)
        if (glm_ctx_seq_len(ctx, i)) return glm_err(GLM_ERR_ARG, "sequence %d of the context is not empty", i);
    glm_sched *s = calloc(1, sizeof *s);
    if (!s) return glm_err(GLM_ERR_OOM, "out of memory");
    s->ctx = ctx;
    s->p = p;
    s->hp = glm_model_hparams(glm_ctx_model(ctx));
    s->n_slots = cp->n_seq_max;
    s->n_ctx = cp->n_ctx;
    s->budget = p.batch_tokens ? p.batch_tokens : cp->n_batch;
    if (s->budget < s->n_slots) s->budget = s->n_slots;  /* every running request decodes each step */
    s->next_id = 1;
    const int total = glm_ctx_kv_pages_total(ctx);
    s->cache_cap = 16;
    while (s->cache_cap < 2 * (size_t)total) s->cache_cap *= 2;
    s->cache = calloc(s->cache_cap, sizeof *s->cache);
    s->page_key = calloc((size_t)total, sizeof *s->page_key);
    s->lru_prev = malloc((size_t)total * sizeof *s->lru_prev);
    s->lru_next = malloc((size_t)total * sizeof *s->lru_next);
    s->lru_head = s->lru_tail = -1;
    s->slot = calloc((size_t)s->n_slots, sizeof *s->slot);
    s->b_tok = malloc((size_t)s->budget * sizeof *s->b_tok);
    s->b_seq = malloc((size_t)s->budget * sizeof *s->b_seq);
    s->b_logits = malloc((size_t)s->budget);
    s->b_req = malloc((size_t)s->n_slots * sizeof *s->b_req);
    s->order = malloc((size_t)s->n_slots * sizeof *s->order);
    s->s_req = malloc((size_t)s->n_slots * sizeof *s->s_req);
    s->s_rows = malloc((size_t)s->n_slots * sizeof *s->s_rows);
    s->s_out = malloc((size_t)s->n_slots * sizeof *s->s_out);
    s->dev = !p.host_sampling && !p.n_draft && glm_ctx_samples_on_device(ctx);  /* drafting picks on the host */
    int spec_ok = 1;
    if (p.n_draft) {
        const int V = s->hp->n_vocab, D = s->hp->n_embd;
        s->hid = malloc((size_t)s->budget * D * sizeof *s->hid);
        s->mq = malloc((size_t)s->n_slots * V * sizeof *s->mq);
        s->mg = malloc((size_t)s->n_slots * D * sizeof *s->mg);
        s->dg = malloc((size_t)D * sizeof *s->dg);
        s->dlog = malloc((size_t)V * sizeof *s->dlog);
        spec_ok = s->hid && s->mq && s->mg && s->dg && s->dlog && !glm_spec_work_init(&s->w, V);
    }
    if (s->dev) {
        s->s_par = malloc((size_t)s->n_slots * sizeof *s->s_par);
        s->s_step = malloc((size_t)s->n_slots * sizeof *s->s_step);
        s->s_hist = malloc((size_t)s->n_slots * sizeof *s->s_hist);
        s->s_nhist = malloc((size_t)s->n_slots * sizeof *s->s_nhist);
    }
    if (!s->cache || !s->page_key || !s->lru_prev || !s->lru_next || !s->slot || !s->b_tok || !s->b_seq || !s->b_logits || !s->b_req || !s->order || !s->s_req || !s->s_rows || !s->s_out ||
        (s->dev && (!s->s_par || !s->s_step || !s->s_hist || !s->s_nhist)) || !spec_ok) {
        glm_sched_free(s);
        return glm_err(GLM_ERR_OOM, "out of memory");
    }
    *out = s;
    return GLM_OK;
}

void glm_sched_free(glm_sched *s) {
    if (!s) return;
    for (int i = 0; s->slot && i < s->n_slots; i++)
        if (s->slot[i]) { glm_ctx_seq_clear(s->ctx, i); req_free(s->slot[i]); }
    for (req *r = s->wait_head, *n; r; r = n) { n = r->next; req_free(r); }
    if (s->cache)
        for (size_t i = 0; i < s->cache_cap; i++)
            if (s->cache[i].hash) glm_ctx_page_release(s->ctx, s->cache[i].page);
    free(s->cache); free(s->page_key); free(s->lru_prev); free(s->lru_next); free(s->slot);
    free(s->b_tok); free(s->b_seq); free(s->b_logits); free(s->b_req); free(s->order);
    free(s->s_req); free(s->s_rows); free(s->s_out);
    free(s->s_par); free(s->s_step); free(s->s_hist); free(s->s_nhist);
    glm_spec_work_free(&s->w);
    free(s->hid); free(s->mq); free(s->mg); free(s->dg); free(s->dlog);
    free(s);
}

/* Puts r in the waiting list in arrival order (a preempted request goes before later ones). */
static void wait_insert(glm_sched *s, req *r) {
    req **pp = &s->wait_head;
    while (*pp && (*pp)->arrival < r->arrival) pp = &(*pp)->next;
    r->next = *pp;
    *pp = r;
    s->n_wait++;
}

int glm_sched_submit(glm_sched *s, const glm_request *q, int64_t *id) {
    if (id) *id = 0;
    const int V = s->hp->n_vocab;
    if (!q || !q->prompt || q->n_prompt < 1) return glm_err(GLM_ERR_ARG, "the prompt is empty");
    if (q->max_tokens < 1) return glm_err(GLM_ERR_ARG, "max_tokens %d: at least 1 token must be generated", q->max_tokens);
    if ((int64_t)q->n_prompt + q->max_tokens > s->n_ctx)
        return glm_err(GLM_ERR_ARG, "%d prompt tokens + max_tokens %d = %lld tokens, more than the context size %d",
                       q->n_prompt, q->max_tokens, (long long)q->n_prompt + q->max_tokens, s->n_ctx);
    const int need = pages_for((int64_t)q->n_prompt + q->max_tokens), total = glm_ctx_kv_pages_total(s->ctx);
    if (need > total)
        return glm_err(GLM_ERR_ARG, "%d prompt tokens + max_tokens %d need %d KV pages, the cache has %d", q->n_prompt,
                       q->max_tokens, need, total);
    for (int i = 0; i < q->n_prompt; i++)
        if (q->prompt[i] < 0 || q->prompt[i] >= V)
            return glm_err(GLM_ERR_ARG, "prompt token %d: id %d out of range [0, %d)", i, q->prompt[i], V);
    if (q->n_stop < 0 || (q->n_stop > 0 && !q->stop)) return glm_err(GLM_ERR_ARG, "bad stop string list");
    if (q->n_stop > 0 && !s->p.tok) return glm_err(GLM_ERR_ARG, "stop strings need the scheduler's tokenizer");
    for (int i = 0; i < q->n_stop; i++)
        if (!q->stop[i] || !q->stop[i][0]) return glm_err(GLM_ERR_ARG, "stop string %d is empty", i);
    req *r = calloc(1, sizeof *r);
    if (!r) return glm_err(GLM_ERR_OOM, "out of memory");
    r->cap = q->n_prompt + q->max_tokens;
    r->tok = malloc((size_t)r->cap * sizeof *r->tok);
    r->ph = malloc(((size_t)r->cap / PAGE + 1) * sizeof *r->ph);
    r->smp = glm_sampler_new(&q->sampling);
    r->sp = q->sampling;
    r->stop = q->n_stop ? calloc((size_t)q->n_stop, sizeof *r->stop) : NULL;
    int bad = !r->tok || !r->ph || !r->smp || (q->n_stop && !r->stop);
    for (int i = 0; !bad && i < q->n_stop; i++) {
        if (!(r->stop[i] = strdup(q->stop[i]))) bad = 1;
        r->n_stop = i + 1;
        size_t l = strlen(q->stop[i]);
        if (l > r->max_stop) r->max_stop = l;
    }
    if (!bad && s->p.tok && glm_detok_stream_new(s->p.tok, GLM_DETOK_SKIP_SPECIAL, &r->ds)) bad = 1;
    if (bad) { req_free(r); return glm_err(GLM_ERR_OOM, "out of memory"); }
    memcpy(r->tok, q->prompt, (size_t)q->n_prompt * sizeof *r->tok);
    r->n_tok = r->n_prompt = q->n_prompt;
    r->max_tokens = q->max_tokens;
    r->ignore_eos = q->ignore_eos;
    r->cb = q->on_event;
    r->user = q->user;
    r->slot = -1;
    r->rng = glm_spec_rng_init(q->sampling.seed);
    r->id = s->next_id++;
    r->arrival = s->next_arrival++;
    wait_insert(s, r);
    if (id) *id = r->id;
    return GLM_OK;
}

/* Calls r's callback. */
static void emit(req *r, int32_t token, const char *text, size_t len, glm_finish_reason fin) {
    if (!r->cb) return;
    glm_sched_event ev = {r->id, token, text, len, fin, r->n_prompt, r->n_cached, r->n_gen};
    r->cb(r->user, &ev);
}

/* Takes r out of its slot, freeing the pages only it holds (its cached pages no other
 * sequence holds become cache-only). */
static void release_slot(glm_sched *s, req *r) {
    const int n_pages = pages_for(glm_ctx_seq_len(s->ctx, r->slot));
    for (int i = 0; i < n_pages; i++) {
        const int32_t page = glm_ctx_seq_page(s->ctx, r->slot, i);
        if (page >= 0 && s->page_key[page] && glm_ctx_page_refs(s->ctx, page) == 2) lru_push(s, page);
    }
    glm_ctx_seq_clear(s->ctx, r->slot);
    s->slot[r->slot] = NULL;
    r->slot = -1;
}

/* Ends r with a last event and frees it (r is in a slot or already out of every list). */
static void finish(glm_sched *s, req *r, int32_t token, const char *text, size_t len, glm_finish_reason fin) {
    if (r->slot >= 0) release_slot(s, r);
    s->st.finished++;
    emit(r, token, text, len, fin);
    req_free(r);
}

int glm_sched_cancel(glm_sched *s, int64_t id) {
    for (int i = 0; i < s->n_slots; i++)
        if (s->slot[i] && s->slot[i]->id == id) { finish(s, s->slot[i], -1, NULL, 0, GLM_FINISH_CANCELLED); return GLM_OK; }
    for (req **pp = &s->wait_head; *pp; pp = &(*pp)->next)
        if ((*pp)->id == id) {
            req *r = *pp;
            *pp = r->next;
            s->n_wait--;
            finish(s, r, -1, NULL, 0, GLM_FINISH_CANCELLED);
            return GLM_OK;
        }
    return glm_err(GLM_ERR_ARG, "no request %lld", (long long)id);
}

int glm_sched_idle(const glm_sched *s) {
    if (s->wait_head) return 0;
    for (int i = 0; i < s->n_slots; i++) if (s->slot[i]) return 0;
    return 1;
}

void glm_sched_get_stats(const glm_sched *s, glm_sched_stats *st) {
    *st = s->st;
    st->running = 0;
    for (int i = 0; i < s->n_slots; i++) st->running += s->slot[i] != NULL;
    st->waiting = s->n_wait;
    st->kv_pages_total = glm_ctx_kv_pages_total(s->ctx);
    st->kv_pages_cached = cache_only_pages(s);
    st->kv_pages_used = st->kv_pages_total - glm_ctx_kv_pages_free(s->ctx) - st->kv_pages_cached;
}

/* The running request that arrived last, or NULL. */
static req *newest_running(glm_sched *s) {
    req *best = NULL;
    for (int i = 0; i < s->n_slots; i++)
        if (s->slot[i] && (!best || s->slot[i]->arrival > best->arrival)) best = s->slot[i];
    return best;
}

/* Evicts r: its pages are freed (those the cache holds stay cached) and it waits to be
 * recomputed from its tokens. */
static void preempt(glm_sched *s, req *r) {
    release_slot(s, r);
    r->n_done = 0;
    r->n_registered = 0;
    s->st.preemptions++;
    wait_insert(s, r);
}

/* Admits waiting requests, oldest first, while a slot and the pages of their tokens are
 * there (free pages and pages only the cache holds, less those taken by earlier
 * admissions this step). */
static int admit(glm_sched *s) {
    int avail = glm_ctx_kv_pages_free(s->ctx) + cache_only_pages(s);
    int32_t *hits = NULL;
    while (s->wait_head) {
        int slot = -1;
        for (int i = 0; i < s->n_slots && slot < 0; i++) if (!s->slot[i]) slot = i;
        if (slot < 0) break;
        req *r = s->wait_head;
        /* cached pages of the tokens, leaving at least one token to feed for the logits */
        int k = 0, k_idle = 0;
        if (s->p.prefix_cache) {
            if (!hits && !(hits = malloc(((size_t)s->n_ctx / PAGE + 1) * sizeof *hits))) return glm_err(GLM_ERR_OOM, "out of memory");
            while (k < (r->n_tok - 1) / PAGE && (hits[k] = cache_lookup(s, r, k)) >= 0) {
                k_idle += glm_ctx_page_refs(s->ctx, hits[k]) == 1;
                k++;
            }
        }
        const int need = pages_for(r->n_tok) - k + k_idle;
        if (need > avail) break;
        avail -= need;
        s->wait_head = r->next;
        s->n_wait--;
        r->next = NULL;
        for (int i = 0; i < k; i++)
            if (glm_ctx_page_refs(s->ctx, hits[i]) == 1) lru_unlink(s, hits[i]);
        int rc = glm_ctx_seq_share(s->ctx, slot, hits, k, s->p.n_draft > 0);
        if (rc) { free(hits); return rc; }
        s->slot[slot] = r;
        r->slot = slot;
        r->n_done = k * PAGE;
        r->n_registered = k;
        if (!r->admitted) {
            r->admitted = 1;
            r->n_cached = k * PAGE;
            s->st.prompt_tokens += (uint64_t)r->n_prompt;
            s->st.cached_tokens += (uint64_t)k * PAGE;
        }
    }
    free(hits);
    return GLM_OK;
}

/* Samples the next token of each of the n requests rq from the logits of batch row
 * rows[i] of the step just run: out[i] = token of rq[i]. The one place sampling happens,
 * once a step over the whole batch, so that a sampler on the device can take it over:
 * it needs each request's sampling parameters, its generated tokens (the penalties'
 * history) and its sampler state, and gives back only the token ids. On a device that
 * samples (glm_ctx_sample) the state is (seed, tokens generated so far): a request's draws
 * do not depend on the rest of the batch, and a preempted one draws the same again. */
static int sample_batch(glm_sched *s, int n, req **rq, const int32_t *rows, int32_t *out) {
    if (s->dev && n > 0) {
        for (int i = 0; i < n; i++) {
            const req *r = rq[i];
            s->s_par[i] = r->sp;
            s->s_step[i] = (uint64_t)r->n_gen;
            s->s_hist[i] = r->tok + r->n_prompt;
            s->s_nhist[i] = r->n_gen;
        }
        int rc = glm_ctx_sample(s->ctx, n, rows, s->s_par, s->s_step, s->s_hist, s->s_nhist, out);
        if (!rc) s->st.device_sampled += (uint64_t)n;
        if (rc != GLM_ERR_NOT_IMPLEMENTED) return rc;  /* else these rows are not on the device: the host samples */
    }
    for (int i = 0; i < n; i++) {
        req *r = rq[i];
        const float *logits = glm_ctx_logits(s->ctx, rows[i]);
        if (!logits) return GLM_ERR_ARG;
        int32_t t = glm_sampler_sample(r->smp, logits, s->hp->n_vocab, r->tok + r->n_prompt, r->n_gen);
        if (t < 0) return t;
        out[i] = t;
    }
    return GLM_OK;
}

/* Non-zero when t ends generation (one of the model's end-of-sequence tokens). */
static int is_eos(const glm_sched *s, int32_t t) {
    for (int i = 0; i < s->hp->n_eos; i++) if (s->hp->eos[i] == t) return 1;
    return 0;
}

/* Appends n bytes to r's text; returns 0 or GLM_ERR_OOM. */
static int text_append(req *r, const char *p, size_t n) {
    if (r->text_len + n + 1 > r->text_cap) {
        size_t cap = (r->text_len + n + 1) * 2;
        char *nt = realloc(r->text, cap);
        if (!nt) return glm_err(GLM_ERR_OOM, "out of memory");
        r->text = nt;
        r->text_cap = cap;
    }
    memcpy(r->text + r->text_len, p, n);
    r->text_len += n;
    r->text[r->text_len] = 0;
    return GLM_OK;
}

/* Where the first stop string begins in r's text (searching only where a new one can
 * be), or -1. */
static long stop_at(const req *r) {
    size_t from = r->emitted;
    long best = -1;
    for (int i = 0; i < r->n_stop; i++) {
        const char *p = r->text && r->text_len >= from ? memmem(r->text + from, r->text_len - from, r->stop[i], strlen(r->stop[i])) : NULL;
        if (p && (best < 0 || p - r->text < best)) best = p - r->text;
    }
    return best;
}

/* Bytes at the end of r's text that could be the beginning of a stop string. */
static size_t stop_holdback(const req *r) {
    size_t keep = 0;
    for (int i = 0; i < r->n_stop; i++) {
        size_t l = strlen(r->stop[i]);
        for (size_t k = l - 1; k > keep; k--)
            if (k <= r->text_len - r->emitted && !memcmp(r->text + r->text_len - k, r->stop[i], k)) { keep = k; break; }
    }
    return keep;
}

/* Takes token t for r: appends it, gives out the text that became final, and ends r
 * when it is done (then *ended = 1, where ended is not NULL: r is freed). Returns 0 or an
 * error. */
static int accept_token(glm_sched *s, req *r, int32_t t, int *ended) {
    r->tok[r->n_tok++] = t;
    r->n_gen++;
    s->st.generated_tokens++;
    glm_finish_reason fin = GLM_FINISH_NONE;
    if (!r->ignore_eos && is_eos(s, t)) fin = GLM_FINISH_STOP;
    else if (r->n_gen >= r->max_tokens || r->n_tok >= s->n_ctx) fin = GLM_FINISH_LENGTH;
    if (ended) *ended = fin != GLM_FINISH_NONE;
    if (!r->ds) {
        if (fin) finish(s, r, t, NULL, 0, fin);
        else emit(r, t, NULL, 0, fin);
        return GLM_OK;
    }
    const char *piece = NULL;
    size_t n_piece = 0;
    int rc = fin == GLM_FINISH_STOP ? GLM_OK : glm_detok_stream_push(r->ds, t, &piece, &n_piece);
    if (!rc && n_piece) rc = text_append(r, piece, n_piece);
    if (!rc && fin && !glm_detok_stream_flush(r->ds, &piece, &n_piece) && n_piece)
        rc = text_append(r, piece, n_piece);  /* an unfinished character, as U+FFFD */
    if (rc) return rc;
    size_t end = r->text_len;
    long at = r->n_stop ? stop_at(r) : -1;
    if (at >= 0) { end = (size_t)at; fin = GLM_FINISH_STOP; if (ended) *ended = 1; }
    else if (!fin) end -= stop_holdback(r);
    const char *out = r->text ? r->text + r->emitted : "";
    size_t n = end > r->emitted ? end - r->emitted : 0;
    r->emitted += n;
    if (fin) finish(s, r, t, out, n, fin);
    else emit(r, t, out, n, fin);
    /* keep the text buffer short: only what is not given out yet matters */
    if (!fin && r->emitted > 4096) {
        memmove(r->text, r->text + r->emitted, r->text_len - r->emitted);
        r->text_len -= r->emitted;
        r->emitted = 0;
    }
    return GLM_OK;
}

/* Ends every running request with GLM_FINISH_ERROR (after a failed step). */
static void fail_running(glm_sched *s) {
    for (int i = 0; i < s->n_slots; i++)
        if (s->slot[i]) finish(s, s->slot[i], -1, NULL, 0, GLM_FINISH_ERROR);
}

/* qsort order of running requests: oldest first. */
static int by_arrival(const void *a, const void *b) {
    const req *x = *(req *const *)a, *y = *(req *const *)b;
    return x->arrival < y->arrival ? -1 : x->arrival > y->arrival;
}

/* Makes room for `need` more pages: reclaims cached pages, then preempts the newest
 * running request other than keep. Returns 1 when there is room, 0 when keep itself is
 * the newest (nothing else to evict). */
static int make_room(glm_sched *s, int need, req *keep) {
    while (glm_ctx_kv_pages_free(s->ctx) < need) {
        if (cache_reclaim_one(s)) continue;
        req *v = newest_running(s);
        if (!v || v == keep) return 0;
        preempt(s, v);
    }
    return 1;
}

/* Drafts r may take this step at most (0 when it is not decoding or its MTP layer lags):
 * n_draft, less past max_tokens or the context. */
static int draft_room(const glm_sched *s, const req *r) {
    if (!s->p.n_draft || r->n_tok - r->n_done != 1 || glm_ctx_mtp_len(s->ctx, r->slot) != r->n_done) return 0;
    int n = s->p.n_draft;
    if (n > r->max_tokens - r->n_gen - 1) n = r->max_tokens - r->n_gen - 1;
    if (n > s->n_ctx - r->n_done - 1) n = s->n_ctx - r->n_done - 1;
    return n > 0 ? n : 0;
}

/* Drafts for the decoding requests of the planned batch (b_req[nb], T tokens, resv pages
 * still to take), oldest first, in the budget and the free pages left: writes each one's
 * drafts after its tokens and grows its chunk. A request whose drafting runs out of pages
 * decodes plainly. Returns 0 or an error. */
static int draft_batch(glm_sched *s, int nb, int *T, int resv) {
    const int V = s->hp->n_vocab, D = s->hp->n_embd;
    int avail = glm_ctx_kv_pages_free(s->ctx) - resv;
    for (int i = 0; i < nb; i++) {
        req *r = s->b_req[i];
        r->n_dr = 0;
        r->mtp_ok = glm_ctx_mtp_len(s->ctx, r->slot) == r->n_done;
        int n = draft_room(s, r);
        if (n > s->budget - *T) n = s->budget - *T;
        while (n > 0 && pages_for((int64_t)r->n_done + 1 + n) - pages_for(r->n_done + 1) > avail) n--;
        if (n <= 0) continue;
        if (r->sp.temp > 0 && !r->q && !(r->q = malloc((size_t)s->p.n_draft * V * sizeof *r->q)))
            return glm_err(GLM_ERR_OOM, "out of memory");
        const uint64_t rng0 = r->rng;
        int rc = glm_spec_draft(&s->w, &r->sp, &r->rng, s->ctx, r->slot, r->n_done, s->mq + (size_t)r->slot * V,
                                s->mg + (size_t)r->slot * D, n, r->tok + r->n_tok, r->sp.temp > 0 ? r->q : NULL, s->dg,
                                s->dlog, r->tok + r->n_prompt, r->n_gen);
        if (rc) {   /* give back what the drafts wrote; out of pages: no drafts this step */
            r->rng = rng0;
            int rc2 = glm_ctx_seq_truncate(s->ctx, r->slot, r->n_done);
            if (rc != GLM_WARN_KV_FULL) return rc;
            if (rc2) return rc2;
            continue;
        }
        avail -= pages_for((int64_t)r->n_done + 1 + n) - pages_for(r->n_done + 1);
        r->n_dr = n;
        r->chunk += n;
        *T += n;
    }
    return GLM_OK;
}

/* After the forward of a drafting scheduler's step: for each request of the batch, the
 * picks (verifying its drafts, cutting the cache back past the rejected ones), its MTP
 * layer over the positions that became final, its full pages to the prefix cache; then
 * the tokens given out, request by request. Returns 0 or an error. */
static int spec_finish_step(glm_sched *s, int nb) {
    const int V = s->hp->n_vocab, D = s->hp->n_embd;
    const int n_batch = glm_ctx_params_of(s->ctx)->n_batch;
    for (int i = 0; i < nb; i++) {
        req *r = s->b_req[i];
        const int M = r->n_done, plain = r->chunk - r->n_dr;
        int fed = plain;
        r->n_acc = 0;
        if (M + plain == r->n_tok) {   /* all its tokens are in: pick the next ones */
            int32_t nt;
            const int k = glm_spec_verify(&s->w, &r->sp, &r->rng, s->ctx, r->row0 + plain - 1, r->tok + r->n_tok, r->q,
                                          r->n_dr, r->tok + r->n_prompt, r->n_gen, &nt);
            if (k < 0) return k;
            if (r->n_dr) {
                s->st.draft_steps++;
                s->st.draft_tokens += (uint64_t)r->n_dr;
                s->st.accepted_tokens += (uint64_t)k;
                int rc = k < r->n_dr ? glm_ctx_seq_truncate(s->ctx, r->slot, M + plain + k) : GLM_OK;
                if (rc) return rc;
            }
            r->tok[r->n_tok + k] = nt;   /* after the accepted drafts (room: draft_room) */
            fed += k;
            r->n_acc = k + 1;
        }
        r->n_done = M + fed;
        r->chunk = r->n_dr = 0;
        if (r->mtp_ok)   /* the MTP layer over positions M..M+fed-1 (each with the token after it) */
            for (int j = 0; j < fed; j += n_batch) {
                const int n = fed - j < n_batch ? fed - j : n_batch;
                int rc = glm_ctx_mtp_forward(s->ctx, r->slot, M + j, n, r->tok + M + j + 1, s->hid + (size_t)(r->row0 + j) * D,
                                             s->mg + (size_t)r->slot * D, s->mq + (size_t)r->slot * V);
                if (rc) return rc;
            }
        cache_register(s, r);
    }
    for (int i = 0; i < nb; i++) {
        req *r = s->b_req[i];
        const int n = r->n_acc;
        for (int j = 0, ended = 0; j < n && !ended; j++) {
            int rc = accept_token(s, r, r->tok[r->n_tok], &ended);   /* the token is there already */
            if (rc) return rc;
        }
    }
    return GLM_OK;
}

static int sched_step(glm_sched *s);

/* One step, timed: the whole call, its forward and its picking (glm_sched_stats). */
int glm_sched_step(glm_sched *s) {
    const double t0 = glm_now_s();
    s->step_prefill = 0;
    const int rc = sched_step(s);
    if (rc > 0) {
        const double t = glm_now_s() - t0;
        s->st.steps++;
        s->st.t_step += t;
        if (s->step_prefill) { s->st.prefill_steps++; s->st.t_prefill_step += t; }
    }
    return rc;
}

static int sched_step(glm_sched *s) {
    int rc = admit(s);
    if (rc) return rc;
    int T, nb, resv;
    for (;;) {
        resv = 0;  /* pages the requests already in the batch will take */
        T = nb = 0;
        /* decoding requests first (one token each), oldest first; then prompt chunks */
        int n_run = 0;
        for (int i = 0; i < s->n_slots; i++) if (s->slot[i]) s->order[n_run++] = s->slot[i];
        qsort(s->order, (size_t)n_run, sizeof *s->order, by_arrival);
        for (int pass = 0; pass < 2; pass++) {
            int lim = s->budget;
            if (pass == 1 && s->p.n_draft) {   /* the drafts may take up to half the budget left before prompt chunks */
                int want = 0;
                for (int i = 0; i < nb; i++) want += draft_room(s, s->b_req[i]);
                lim -= want < (s->budget - T) / 2 ? want : (s->budget - T) / 2;
            }
            for (int k = 0; k < n_run && T < lim; k++) {
                req *r = s->order[k];
                if (r->slot < 0 || (r->n_tok - r->n_done == 1) != (pass == 0)) continue;  /* preempted, or the other kind */
                int chunk = r->n_tok - r->n_done;
                if (chunk > lim - T) chunk = lim - T;
                int need = pages_for((int64_t)r->n_done + chunk) - pages_for(r->n_done);
                if (resv + need > glm_ctx_kv_pages_free(s->ctx) && !make_room(s, resv + need, r)) {
                    if (pass == 0) { preempt(s, r); continue; }  /* nothing newer to evict */
                    /* a prompt chunk shrinks to the pages there are */
                    int room = (glm_ctx_kv_pages_free(s->ctx) - resv) * PAGE + (pages_for(r->n_done) * PAGE - r->n_done);
                    if (room < chunk) chunk = room;
                    if (chunk <= 0) break;
                    need = pages_for((int64_t)r->n_done + chunk) - pages_for(r->n_done);
                }
                resv += need;
                r->chunk = chunk;
                r->n_dr = 0;
                s->b_req[nb++] = r;
                T += chunk;
            }
        }
        /* a request preempted after it joined the batch leaves it (rebuild) */
        int stale = 0;
        for (int i = 0; i < nb; i++) stale |= s->b_req[i]->slot < 0;
        if (stale) { for (int i = 0; i < nb; i++) s->b_req[i]->chunk = 0; continue; }
        if (T > 0) break;
        for (int i = 0; i < nb; i++) s->b_req[i]->chunk = 0;
        req *v = newest_running(s);
        if (!v) return 0;  /* nothing runs: idle, or waiting for pages nobody holds */
        int others = 0;
        for (int i = 0; i < s->n_slots; i++) others += s->slot[i] && s->slot[i] != v;
        if (!others) return glm_err(GLM_ERR_ARG, "request %lld cannot get KV pages with nothing else running", (long long)v->id);
        preempt(s, v);  /* every running request is stuck on pages: free some */
    }
    if (s->p.n_draft && (rc = draft_batch(s, nb, &T, resv))) {
        for (int i = 0; i < nb; i++) s->b_req[i]->chunk = 0;
        fail_running(s);
        return rc;
    }
    /* the batch: each request's tokens in turn (a drafting request's last token and its
     * drafts, every row with logits) */
    T = 0;
    for (int i = 0; i < nb; i++) {
        req *r = s->b_req[i];
        r->row0 = T;
        s->step_prefill |= r->n_tok - r->n_done > 1;   /* a prompt chunk (or a preempted request's recomputation) */
        for (int j = 0; j < r->chunk; j++) {
            s->b_tok[T] = r->tok[r->n_done + j];
            s->b_seq[T] = r->slot;
            s->b_logits[T] = r->n_dr > 0 || r->n_done + j == r->n_tok - 1;
            T++;
        }
    }
    glm_batch b = {T, s->b_tok, s->b_seq, s->b_logits};
    const double t_fwd = glm_now_s();
    rc = s->p.n_draft ? glm_ctx_decode_hidden(s->ctx, &b, s->hid) : glm_ctx_decode(s->ctx, &b);
    const double t_pick = glm_now_s();
    s->st.t_forward += t_pick - t_fwd;
    if (rc) {
        for (int i = 0; i < nb; i++) s->b_req[i]->chunk = 0;
        fail_running(s);
        return rc < 0 ? rc : glm_err(GLM_ERR_ARG, "KV pages ran out inside a step: %s", glm_last_error());
    }
    s->st.computed_tokens += (uint64_t)T;
    if (s->p.n_draft) {
        rc = spec_finish_step(s, nb);
        s->st.t_sample += glm_now_s() - t_pick;
        if (rc) { fail_running(s); return rc; }
        return T;
    }
    int ns = 0, row = 0;
    for (int i = 0; i < nb; i++) {
        req *r = s->b_req[i];
        r->n_done += r->chunk;
        row += r->chunk;
        r->chunk = 0;
        cache_register(s, r);
        if (r->n_done == r->n_tok) {
            s->s_req[ns] = r;
            s->s_rows[ns++] = row - 1;
        }
    }
    rc = sample_batch(s, ns, s->s_req, s->s_rows, s->s_out);
    s->st.t_sample += glm_now_s() - t_pick;
    if (rc) { fail_running(s); return rc; }
    for (int i = 0; i < ns; i++)
        if ((rc = accept_token(s, s->s_req[i], s->s_out[i], NULL))) { fail_running(s); return rc; }
    return T;
}
