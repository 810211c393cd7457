/* test-sched.c - the scheduler on glm-tiny: requests run together (any batch budget,
 * chunked prompts, prefix cache on or off) give each the tokens it gives alone; a KV
 * cache too small for all of them preempts and still gives the same tokens (greedy and
 * seeded sampling); a second request with the same 32-token prefix feeds only its new
 * tokens; cancellation frees pages at once; stop strings end the text before them; no
 * page is leaked. Drafting with glm-tiny's MTP layer (n_draft 1..3) gives greedy requests
 * the tokens, text and finish of plain decoding (stop strings, preemption, the prefix
 * cache, small budgets), and seeded sampled requests the same tokens run after run. */
#include "glm.h"
#include "test.h"

#include <stdint.h>

#define MODEL "models/glm-tiny"

static glm_model *model;
static glm_tokenizer *tok;

/* The tiny model, loaded once. */
static glm_model *tiny(void) {
    if (!model && glm_model_load(MODEL, NULL, &model)) fprintf(stderr, "  cannot load %s: %s\n", MODEL, glm_last_error());
    return model;
}

/* A request's output as the callback saw it. */
typedef struct {
    int32_t toks[512];
    int n;
    char text[4096];
    size_t text_len;
    glm_finish_reason fin;
    int n_cached, events_after_finish;
} out_t;

static void on_event(void *user, const glm_sched_event *ev) {
    out_t *o = user;
    if (o->fin) o->events_after_finish++;
    if (ev->token >= 0 && o->n < 512) o->toks[o->n++] = ev->token;
    if (ev->text && o->text_len + ev->len < sizeof o->text) {
        memcpy(o->text + o->text_len, ev->text, ev->len);
        o->text_len += ev->len;
        o->text[o->text_len] = 0;
    }
    o->fin = ev->finish;
    o->n_cached = ev->n_cached;
}

/* A test request: prompt tokens from a seed, its length and max_tokens. */
typedef struct {
    int32_t prompt[256];
    int n_prompt, max_tokens;
    glm_sampler_params sp;
} spec_t;

static void make_spec(spec_t *s, uint64_t seed, int n_prompt, int max_tokens, int greedy) {
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    for (int i = 0; i < n_prompt; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        s->prompt[i] = (int32_t)(x % 8000);
    }
    s->n_prompt = n_prompt;
    s->max_tokens = max_tokens;
    s->sp = glm_sampler_default_params();
    s->sp.seed = seed;
    if (greedy) s->sp.temp = 0;
}

/* A context for n_slots requests of up to 512 tokens, with n_pages KV pages (0: all),
 * passes of up to n_batch tokens, and the MTP layer's cache with mtp. */
static glm_ctx *make_ctx_with(int n_slots, int n_pages, int n_batch, int mtp) {
    glm_ctx_params cp = glm_ctx_default_params();
    cp.n_ctx = 512;
    cp.n_seq_max = n_slots;
    cp.n_batch = n_batch;
    cp.n_threads = 1;
    cp.kv_type = GLM_KV_F32;
    cp.n_kv_pages = n_pages;
    cp.mtp = mtp;
    glm_ctx *c = NULL;
    if (glm_ctx_new(tiny(), &cp, &c)) fprintf(stderr, "  ctx: %s\n", glm_last_error());
    return c;
}

static glm_ctx *make_ctx(int n_slots, int n_pages) { return make_ctx_with(n_slots, n_pages, 256, 0); }

/* Steps s until nothing runs; checks it went idle with no page held and n requests
 * finished, and fills *st. Returns the steps taken. */
static int step_to_idle(glm_sched *s, int n, glm_sched_stats *st) {
    int steps = 0, rc;
    while ((rc = glm_sched_step(s)) > 0) steps++;
    CHECK_MSG(rc == 0, "step: %d %s", rc, glm_last_error());
    CHECK(glm_sched_idle(s));
    glm_sched_get_stats(s, st);
    CHECK_MSG(st->kv_pages_used == 0, "%d pages still held", st->kv_pages_used);
    CHECK(st->finished == (uint64_t)n);
    return steps;
}

/* Runs the n requests through one scheduler (all submitted at once) into outs; returns
 * the scheduler's statistics at the end, and checks that no page is leaked. */
static glm_sched_stats run_all(const spec_t *sp, int n, out_t *outs, int n_slots, int n_pages, int batch_tokens, int cache) {
    glm_sched_stats st = {0};
    glm_ctx *c = make_ctx(n_slots, n_pages);
    if (!c) { CHECK(0); return st; }
    glm_sched_params p = glm_sched_default_params();
    p.batch_tokens = batch_tokens;
    p.prefix_cache = cache;
    glm_sched *s = NULL;
    CHECK(glm_sched_new(c, &p, &s) == GLM_OK);
    for (int i = 0; i < n; i++) {
        memset(&outs[i], 0, sizeof outs[i]);
        glm_request r = {sp[i].prompt, sp[i].n_prompt, sp[i].max_tokens, sp[i].sp, NULL, 0, 1, on_event, &outs[i]};
        CHECK_MSG(glm_sched_submit(s, &r, NULL) == GLM_OK, "%s", glm_last_error());
    }
    step_to_idle(s, n, &st);
    /* every page left is held by the cache alone, and counted so */
    CHECK_MSG(glm_ctx_kv_pages_free(c) + st.kv_pages_cached == glm_ctx_kv_pages_total(c), "%d free + %d cached of %d",
              glm_ctx_kv_pages_free(c), st.kv_pages_cached, glm_ctx_kv_pages_total(c));
    CHECK(glm_sched_cache_clear(s) == st.kv_pages_cached);
    CHECK_MSG(glm_ctx_kv_pages_free(c) == glm_ctx_kv_pages_total(c), "%d of %d pages free after the run",
              glm_ctx_kv_pages_free(c), glm_ctx_kv_pages_total(c));
    glm_sched_free(s);
    glm_ctx_free(c);
    return st;
}

/* Each request run alone, in a scheduler of one slot. */
static void run_alone(const spec_t *sp, int n, out_t *outs) {
    for (int i = 0; i < n; i++) run_all(sp + i, 1, outs + i, 1, 0, 0, 0);
}

static int same_tokens(const out_t *a, const out_t *b) {
    return a->n == b->n && !memcmp(a->toks, b->toks, sizeof(int32_t) * (size_t)a->n);
}

static spec_t specs[32];
static out_t alone[32], together[32];

TEST(many_requests_equal_each_alone) {
    if (!tiny()) { CHECK(0); return; }
    for (int i = 0; i < 32; i++) make_spec(&specs[i], 100 + i, 3 + (i * 37) % 120, 2 + (i * 11) % 30, 1);
    run_alone(specs, 32, alone);
    /* budgets: everything at once, odd chunks, and one token a request (decode only) */
    const int budgets[] = {0, 37, 32}, caches[] = {0, 1, 1};
    for (int bi = 0; bi < 3; bi++) {
        const int cache = caches[bi];
        run_all(specs, 32, together, 32, 0, budgets[bi], cache);
        for (int i = 0; i < 32; i++) {
            CHECK_MSG(same_tokens(&together[i], &alone[i]), "budget %d cache %d: request %d: %d tokens vs %d alone",
                      budgets[bi], cache, i, together[i].n, alone[i].n);
            CHECK(together[i].fin == GLM_FINISH_LENGTH && together[i].n == specs[i].max_tokens);
            CHECK(together[i].events_after_finish == 0);
        }
    }
}

TEST(preemption_gives_the_same_output) {
    if (!tiny()) { CHECK(0); return; }
    spec_t sp[8];
    out_t a[8], b[8];
    for (int greedy = 1; greedy >= 0; greedy--) {
        for (int i = 0; i < 8; i++) make_spec(&sp[i], 7 + i, 20 + 3 * i, 40, greedy);
        run_alone(sp, 8, a);
        /* 14 pages: each request ends holding 4 or 5, so 8 at once must preempt */
        glm_sched_stats st = run_all(sp, 8, b, 8, 14, 0, 0);
        CHECK_MSG(st.preemptions > 0, "no preemption with 14 pages");
        for (int i = 0; i < 8; i++)
            CHECK_MSG(same_tokens(&a[i], &b[i]), "greedy %d: request %d differs after preemption", greedy, i);
        /* with the prefix cache, recomputation finds its own pages */
        st = run_all(sp, 8, b, 8, 14, 24, 1);
        CHECK(st.preemptions > 0);
        for (int i = 0; i < 8; i++)
            CHECK_MSG(same_tokens(&a[i], &b[i]), "greedy %d, cache: request %d differs after preemption", greedy, i);
    }
}

/* Runs one request to the end in s. */
static void run_one(glm_sched *s, const spec_t *sp, out_t *o) {
    memset(o, 0, sizeof *o);
    glm_request r = {sp->prompt, sp->n_prompt, sp->max_tokens, sp->sp, NULL, 0, 1, on_event, o};
    CHECK(glm_sched_submit(s, &r, NULL) == GLM_OK);
    while (glm_sched_step(s) > 0) {}
}

TEST(prefix_cache_feeds_only_new_tokens) {
    if (!tiny()) { CHECK(0); return; }
    spec_t a, b;
    make_spec(&a, 1, 45, 5, 1);
    make_spec(&b, 2, 50, 5, 1);
    memcpy(b.prompt, a.prompt, 40 * sizeof(int32_t));  /* 40 tokens in common: 2 full pages */
    out_t oa, ob, ob_alone;
    run_alone(&b, 1, &ob_alone);
    glm_ctx *c = make_ctx(4, 0);
    glm_sched *s = NULL;
    CHECK(glm_sched_new(c, NULL, &s) == GLM_OK);
    run_one(s, &a, &oa);
    glm_sched_stats st0, st1;
    glm_sched_get_stats(s, &st0);
    CHECK(st0.computed_tokens == 45 + 4);
    CHECK(st0.kv_pages_cached == 3);  /* 49 tokens: 3 full pages */
    run_one(s, &b, &ob);
    glm_sched_get_stats(s, &st1);
    CHECK_MSG(ob.n_cached == 32, "%d cached tokens", ob.n_cached);
    CHECK_MSG(st1.computed_tokens - st0.computed_tokens == 50 - 32 + 4, "fed %llu tokens",
              (unsigned long long)(st1.computed_tokens - st0.computed_tokens));
    CHECK(st1.cached_tokens == 32 && st1.prompt_tokens == 95);
    CHECK(same_tokens(&ob, &ob_alone));
    /* the same prompt again: all its full pages but the one holding its last token */
    run_one(s, &b, &ob);
    CHECK_MSG(ob.n_cached == 48, "%d cached tokens", ob.n_cached);
    CHECK(same_tokens(&ob, &ob_alone));
    CHECK(glm_sched_cache_clear(s) > 0);
    CHECK(glm_ctx_kv_pages_free(c) == glm_ctx_kv_pages_total(c));
    glm_sched_free(s);
    glm_ctx_free(c);
}

TEST(prompt_of_whole_pages_feeds_its_last_page) {
    /* a 32-token prompt fully in the cache: its last page is fed again (the last token's
     * logits are needed), the first is shared; the output is the same */
    if (!tiny()) { CHECK(0); return; }
    spec_t a;
    make_spec(&a, 21, 32, 3, 1);
    glm_ctx *c = make_ctx(2, 0);
    glm_sched *s = NULL;
    CHECK(glm_sched_new(c, NULL, &s) == GLM_OK);
    out_t o1, o2;
    run_one(s, &a, &o1);
    glm_sched_stats st0, st1;
    glm_sched_get_stats(s, &st0);
    run_one(s, &a, &o2);
    glm_sched_get_stats(s, &st1);
    CHECK_MSG(o2.n_cached == 16, "%d cached tokens", o2.n_cached);
    CHECK_MSG(st1.computed_tokens - st0.computed_tokens == 16 + 2, "fed %llu tokens",
              (unsigned long long)(st1.computed_tokens - st0.computed_tokens));
    CHECK(same_tokens(&o1, &o2) && o2.n == 3);
    glm_sched_free(s);
    CHECK(glm_ctx_kv_pages_free(c) == glm_ctx_kv_pages_total(c));
    glm_ctx_free(c);
}

TEST(preempting_requests_that_share_prefix_pages) {
    /* six requests on one 32-token prefix (its two pages shared by all through the cache)
     * in 12 pages: the newest are preempted while the others still map the shared pages;
     * each gives its tokens alone, and every page comes back */
    if (!tiny()) { CHECK(0); return; }
    spec_t sp[6];
    out_t a[6], b[6];
    for (int i = 0; i < 6; i++) {
        make_spec(&sp[i], 40 + i, 36 + i, 30, 1);
        if (i) memcpy(sp[i].prompt, sp[0].prompt, 32 * sizeof(int32_t));
    }
    run_alone(sp, 6, a);
    glm_sched_stats st = run_all(sp, 6, b, 6, 12, 16, 1);
    CHECK_MSG(st.preemptions > 0, "no preemption with 12 pages");
    CHECK_MSG(st.cached_tokens >= 32, "%llu cached prompt tokens", (unsigned long long)st.cached_tokens);
    for (int i = 0; i < 6; i++) CHECK_MSG(same_tokens(&a[i], &b[i]), "request %d differs", i);
}

TEST(cached_pages_are_reclaimed_before_preemption) {
    if (!tiny()) { CHECK(0); return; }
    spec_t a, b;
    make_spec(&a, 3, 60, 4, 1);
    make_spec(&b, 4, 60, 4, 1);
    glm_ctx *c = make_ctx(2, 6);
    glm_sched *s = NULL;
    CHECK(glm_sched_new(c, NULL, &s) == GLM_OK);
    out_t o;
    run_one(s, &a, &o);
    glm_sched_stats st;
    glm_sched_get_stats(s, &st);
    CHECK(st.kv_pages_cached == 3);
    run_one(s, &b, &o);  /* needs 4 of 6 pages: the cached ones make room */
    glm_sched_get_stats(s, &st);
    CHECK(st.preemptions == 0 && o.n == 4 && st.kv_pages_used == 0);
    glm_sched_free(s);
    CHECK(glm_ctx_kv_pages_free(c) == 6);
    glm_ctx_free(c);
}

TEST(reclaim_takes_the_least_recently_used_pages) {
    if (!tiny()) { CHECK(0); return; }
    spec_t a, b, c;
    make_spec(&a, 11, 33, 1, 1);   /* 2 full pages cached each */
    make_spec(&b, 12, 33, 1, 1);
    make_spec(&c, 13, 100, 1, 1);  /* 7 pages: 6 free, one of the 4 cached is reclaimed */
    glm_ctx *ctx = make_ctx(1, 10);
    glm_sched *s = NULL;
    CHECK(glm_sched_new(ctx, NULL, &s) == GLM_OK);
    out_t o;
    run_one(s, &a, &o);
    run_one(s, &b, &o);
    run_one(s, &c, &o);
    run_one(s, &b, &o);
    CHECK_MSG(o.n_cached == 32, "b: %d cached tokens (its pages were reclaimed before a's)", o.n_cached);
    run_one(s, &a, &o);
    CHECK_MSG(o.n_cached == 0, "a: %d cached tokens (its first page, the oldest, should be gone)", o.n_cached);
    glm_sched_free(s);
    CHECK(glm_ctx_kv_pages_free(ctx) == 10);
    glm_ctx_free(ctx);
}

TEST(cancel_frees_pages_at_once) {
    if (!tiny()) { CHECK(0); return; }
    spec_t a, b;
    make_spec(&a, 5, 40, 200, 1);
    make_spec(&b, 6, 40, 200, 1);
    glm_ctx *c = make_ctx(1, 0);
    glm_sched_params p = glm_sched_default_params();
    p.prefix_cache = 0;
    glm_sched *s = NULL;
    CHECK(glm_sched_new(c, &p, &s) == GLM_OK);
    out_t oa, ob;
    memset(&oa, 0, sizeof oa);
    memset(&ob, 0, sizeof ob);
    glm_request ra = {a.prompt, a.n_prompt, a.max_tokens, a.sp, NULL, 0, 1, on_event, &oa};
    glm_request rb = {b.prompt, b.n_prompt, b.max_tokens, b.sp, NULL, 0, 1, on_event, &ob};
    int64_t ia, ib;
    CHECK(glm_sched_submit(s, &ra, &ia) == GLM_OK);
    CHECK(glm_sched_submit(s, &rb, &ib) == GLM_OK);
    for (int i = 0; i < 5; i++) CHECK(glm_sched_step(s) > 0);
    glm_sched_stats st;
    glm_sched_get_stats(s, &st);
    CHECK(st.running == 1 && st.waiting == 1 && st.kv_pages_used == 3);
    CHECK(glm_sched_cancel(s, ib) == GLM_OK);  /* waiting */
    CHECK(ob.fin == GLM_FINISH_CANCELLED && ob.n == 0);
    CHECK(glm_sched_cancel(s, ia) == GLM_OK);  /* running */
    CHECK(oa.fin == GLM_FINISH_CANCELLED && oa.n == 5);
    CHECK(glm_ctx_kv_pages_free(c) == glm_ctx_kv_pages_total(c));
    CHECK(glm_sched_idle(s) && glm_sched_step(s) == 0);
    CHECK(glm_sched_cancel(s, ia) == GLM_ERR_ARG);
    glm_sched_free(s);
    glm_ctx_free(c);
}

TEST(stop_strings_end_the_text) {
    if (!tiny()) { CHECK(0); return; }
    if (!tok && glm_tokenizer_load_dir(MODEL, &tok)) { CHECK_MSG(0, "%s", glm_last_error()); return; }
    spec_t a;
    make_spec(&a, 9, 12, 60, 1);
    glm_ctx *c = make_ctx(2, 0);
    glm_sched_params p = glm_sched_default_params();
    p.tok = tok;
    glm_sched *s = NULL;
    CHECK(glm_sched_new(c, &p, &s) == GLM_OK);
    out_t full, cut;
    run_one(s, &a, &full);
    CHECK(full.n == 60 && full.fin == GLM_FINISH_LENGTH);
    char *ref = NULL;
    CHECK(glm_detokenize(tok, full.toks, full.n, GLM_DETOK_SKIP_SPECIAL, &ref, NULL) == GLM_OK);
    CHECK_MSG(ref && !strcmp(ref, full.text), "streamed text differs from the detokenized ids");
    /* a stop string from the middle of that text */
    size_t L = strlen(full.text);
    if (L < 20) { free(ref); SKIP("the greedy text is too short for a stop string"); }
    char stop[8];
    memcpy(stop, full.text + L / 2, 5);
    stop[5] = 0;
    const char *stops[2] = {"\x01never", stop};
    glm_request r = {a.prompt, a.n_prompt, a.max_tokens, a.sp, stops, 2, 1, on_event, &cut};
    memset(&cut, 0, sizeof cut);
    CHECK(glm_sched_submit(s, &r, NULL) == GLM_OK);
    while (glm_sched_step(s) > 0) {}
    const char *at = strstr(full.text, stop);
    CHECK(cut.fin == GLM_FINISH_STOP);
    CHECK_MSG(at && cut.text_len == (size_t)(at - full.text) && !memcmp(cut.text, full.text, cut.text_len),
              "text before the stop string: '%s' (stop '%s')", cut.text, stop);
    CHECK(cut.n < full.n);
    free(ref);
    glm_sched_free(s);
    glm_ctx_free(c);
}

TEST(stop_strings_after_a_token_without_text) {
    /* a first token that gives no text (a special token, or the first byte of a
     * character) leaves the text empty: the stop search must not offset a NULL buffer
     * (UBSan in make SAN=1 test); sampled at temperature 2 until some request has one */
    if (!tiny()) { CHECK(0); return; }
    if (!tok && glm_tokenizer_load_dir(MODEL, &tok)) { CHECK_MSG(0, "%s", glm_last_error()); return; }
    glm_ctx *c = make_ctx(32, 0);
    glm_sched_params p = glm_sched_default_params();
    p.tok = tok;
    glm_sched *s = NULL;
    CHECK(glm_sched_new(c, &p, &s) == GLM_OK);
    static spec_t sp[128];
    static out_t o[128];
    const char *stops[1] = {"\x01"};
    int silent = 0;
    for (int round = 0; round < 4 && !silent; round++) {
        for (int i = 0; i < 128; i++) {
            make_spec(&sp[i], 1000 + 128 * round + i, 3, 2, 0);
            sp[i].sp.temp = 2.0f;
            sp[i].sp.top_k = 0;
            sp[i].sp.top_p = 1.0f;
            sp[i].sp.min_p = 0;
            memset(&o[i], 0, sizeof o[i]);
            glm_request r = {sp[i].prompt, sp[i].n_prompt, sp[i].max_tokens, sp[i].sp, stops, 1, 1, on_event, &o[i]};
            CHECK(glm_sched_submit(s, &r, NULL) == GLM_OK);
        }
        while (glm_sched_step(s) > 0) {}
        for (int i = 0; i < 128; i++) {
            CHECK(o[i].fin == GLM_FINISH_LENGTH && o[i].n == 2);
            glm_detok_stream *ds = NULL;
            const char *piece = NULL;
            size_t n = 1;
            CHECK(glm_detok_stream_new(tok, GLM_DETOK_SKIP_SPECIAL, &ds) == GLM_OK);
            CHECK(glm_detok_stream_push(ds, o[i].toks[0], &piece, &n) == GLM_OK);
            silent += n == 0;
            glm_detok_stream_free(ds);
        }
    }
    CHECK_MSG(silent > 0, "no request began with a token without text");
    glm_sched_free(s);
    glm_ctx_free(c);
}

TEST(bad_requests_are_refused) {
    if (!tiny()) { CHECK(0); return; }
    glm_ctx *c = make_ctx(1, 8);
    glm_sched *s = NULL;
    CHECK(glm_sched_new(c, NULL, &s) == GLM_OK);
    int32_t p[4] = {1, 2, 3, 9000};
    glm_request r = {p, 3, 600, glm_sampler_default_params(), NULL, 0, 0, NULL, NULL};
    CHECK(glm_sched_submit(s, &r, NULL) == GLM_ERR_ARG && strstr(glm_last_error(), "more than the context size 512"));
    r.max_tokens = 200;  /* 13 pages, the cache has 8 */
    CHECK(glm_sched_submit(s, &r, NULL) == GLM_ERR_ARG && strstr(glm_last_error(), "the cache has 8"));
    r.max_tokens = 0;
    CHECK(glm_sched_submit(s, &r, NULL) == GLM_ERR_ARG);
    r.max_tokens = 4;
    r.n_prompt = 4;
    CHECK(glm_sched_submit(s, &r, NULL) == GLM_ERR_ARG && strstr(glm_last_error(), "id 9000"));
    r.n_prompt = 0;
    CHECK(glm_sched_submit(s, &r, NULL) == GLM_ERR_ARG);
    const char *st[1] = {"x"};
    r.n_prompt = 3;
    r.stop = st;
    r.n_stop = 1;
    CHECK(glm_sched_submit(s, &r, NULL) == GLM_ERR_ARG && strstr(glm_last_error(), "tokenizer"));
    CHECK(glm_sched_idle(s));
    glm_sched_free(s);
    glm_ctx_free(c);
}

/* ---- speculative decoding (n_draft) ---- */

static int draft_steps_run;   /* scheduler steps of run_draft's last run */

/* Runs n requests (stops[i]: NULL or one stop string) through a scheduler drafting
 * n_draft tokens over a context with the MTP layer; checks the pages at the end and
 * returns the statistics. */
static glm_sched_stats run_draft(const spec_t *sp, const char *const *stops, int n, out_t *outs, int n_slots, int n_pages,
                                 int batch_tokens, int cache, int n_draft) {
    glm_sched_stats st = {0};
    glm_ctx *c = make_ctx_with(n_slots, n_pages, 64, 1);
    CHECK(c != NULL);
    if (!c) return st;
    glm_sched_params p = glm_sched_default_params();
    p.batch_tokens = batch_tokens;
    p.prefix_cache = cache;
    p.tok = tok;
    p.n_draft = n_draft;
    glm_sched *s = NULL;
    CHECK_MSG(glm_sched_new(c, &p, &s) == GLM_OK, "%s", glm_last_error());
    if (!s) { glm_ctx_free(c); return st; }
    for (int i = 0; i < n; i++) {
        memset(&outs[i], 0, sizeof outs[i]);
        const char *const *stop = stops && stops[i] ? &stops[i] : NULL;
        glm_request r = {sp[i].prompt, sp[i].n_prompt, sp[i].max_tokens, sp[i].sp, stop, stop ? 1 : 0, 1, on_event, &outs[i]};
        CHECK_MSG(glm_sched_submit(s, &r, NULL) == GLM_OK, "%s", glm_last_error());
    }
    draft_steps_run = step_to_idle(s, n, &st);
    CHECK(glm_sched_cache_clear(s) == st.kv_pages_cached);
    CHECK_MSG(glm_ctx_kv_pages_free(c) == glm_ctx_kv_pages_total(c), "%d of %d pages free after the run",
              glm_ctx_kv_pages_free(c), glm_ctx_kv_pages_total(c));
    glm_sched_free(s);
    glm_ctx_free(c);
    return st;
}

static int same_output(const out_t *a, const out_t *b) {
    return same_tokens(a, b) && a->fin == b->fin && a->text_len == b->text_len && !memcmp(a->text, b->text, a->text_len) &&
           !a->events_after_finish && !b->events_after_finish;
}

#define N_SPEC 16

TEST(drafting_gives_the_greedy_tokens_of_plain_decoding) {
    if (!tiny()) { CHECK(0); return; }
    if (!tok && glm_tokenizer_load_dir(MODEL, &tok)) { CHECK_MSG(0, "%s", glm_last_error()); return; }
    static spec_t sp[N_SPEC];
    static out_t ref[N_SPEC], got[N_SPEC];
    static char stop_buf[N_SPEC][8];
    const char *stops[N_SPEC] = {0};
    for (int i = 0; i < N_SPEC; i++) make_spec(&sp[i], 300 + i, 2 + (i * 29) % 70, 3 + (i * 13) % 32, 1);
    for (int i = 0; i < 4; i++) memcpy(sp[10 + i].prompt, sp[2].prompt, sizeof(int32_t) * 32);   /* a shared prefix */
    for (int i = 0; i < 4; i++) if (sp[10 + i].n_prompt < 40) sp[10 + i].n_prompt = 40;
    sp[2].n_prompt = 60;
    /* stop strings from the middle of half the requests' plain texts */
    run_draft(sp, NULL, N_SPEC, ref, N_SPEC, 0, 0, 1, 0);
    for (int i = 0; i < N_SPEC; i += 2) {
        const size_t L = ref[i].text_len;
        if (L < 12) continue;
        memcpy(stop_buf[i], ref[i].text + L / 2, 4);
        stops[i] = stop_buf[i];
    }
    /* slots, KV pages (0: all; 20: preemption), budget, prefix cache, drafts from, to */
    const int cfg[][6] = {{N_SPEC, 0, 0, 1, 1, 3}, {N_SPEC, 20, 0, 0, 2, 2}, {N_SPEC, 20, 40, 1, 3, 3}, {6, 0, 24, 1, 1, 1}};
    for (int ci = 0; ci < 4; ci++) {
        glm_sched_stats st0 = run_draft(sp, stops, N_SPEC, ref, cfg[ci][0], cfg[ci][1], cfg[ci][2], cfg[ci][3], 0);
        const int steps0 = draft_steps_run;
        int n_stop = 0;
        for (int i = 0; i < N_SPEC; i++) n_stop += ref[i].fin == GLM_FINISH_STOP;
        if (ci == 0) CHECK_MSG(n_stop >= 3, "%d requests stopped on their stop string", n_stop);
        for (int nd = cfg[ci][4]; nd <= cfg[ci][5]; nd++) {
            glm_sched_stats st = run_draft(sp, stops, N_SPEC, got, cfg[ci][0], cfg[ci][1], cfg[ci][2], cfg[ci][3], nd);
            for (int i = 0; i < N_SPEC; i++)
                CHECK_MSG(same_output(&got[i], &ref[i]), "config %d draft %d request %d: %d tokens (fin %d) vs %d (fin %d)", ci,
                          nd, i, got[i].n, got[i].fin, ref[i].n, ref[i].fin);
            CHECK(st.generated_tokens == st0.generated_tokens);
            CHECK(st.draft_tokens > 0 && st.accepted_tokens > 0 && st.accepted_tokens <= st.draft_tokens);
            if (cfg[ci][1]) CHECK_MSG(st.preemptions > 0, "config %d draft %d: no preemption", ci, nd);
            fprintf(stderr, "  config %d draft %d: %llu of %llu drafts accepted (%.3f) in %llu request steps; %d scheduler steps "
                    "(plain %d), %llu preemptions (plain %llu)\n", ci, nd, (unsigned long long)st.accepted_tokens,
                    (unsigned long long)st.draft_tokens, (double)st.accepted_tokens / (double)(st.draft_tokens ? st.draft_tokens : 1),
                    (unsigned long long)st.draft_steps, draft_steps_run, steps0, (unsigned long long)st.preemptions,
                    (unsigned long long)st0.preemptions);
        }
    }
}

/* Requests that begin on prefix-cache pages draft from their first step: the cached
 * pages carry the MTP rows their first holder wrote, taken only where the token after the
 * page matches (the last row was made with it). A runs alone; then B shares A's first
 * 48 tokens and its 49th (3 pages usable), C shares 48 but not the 49th (2 pages: the
 * third page's last MTP row is A's, not C's); each drafts, and gives the tokens of plain
 * decoding. */
TEST(cached_prefix_requests_draft) {
    if (!tiny()) { CHECK(0); return; }
    static spec_t sp[3];
    static out_t ref[3], got[3];
    for (int i = 0; i < 3; i++) make_spec(&sp[i], 700 + i, 70, 24, 1);
    memcpy(sp[1].prompt, sp[0].prompt, sizeof(int32_t) * 49);
    memcpy(sp[2].prompt, sp[0].prompt, sizeof(int32_t) * 48);
    sp[2].prompt[48] = (sp[0].prompt[48] + 1) % 8000;
    glm_ctx *c = make_ctx_with(4, 0, 64, 1);
    CHECK(c != NULL);
    if (!c) return;
    for (int pass = 0; pass < 2; pass++) {   /* plain, then drafting */
        glm_sched_params p = glm_sched_default_params();
        p.n_draft = pass ? 2 : 0;
        glm_sched *s = NULL;
        CHECK_MSG(glm_sched_new(c, &p, &s) == GLM_OK, "%s", glm_last_error());
        if (!s) break;
        const int want_cached[3] = {0, 48, 32};
        for (int i = 0; i < 3; i++) {
            out_t *o = pass ? &got[i] : &ref[i];
            memset(o, 0, sizeof *o);
            glm_sched_stats st0, st1;
            glm_sched_get_stats(s, &st0);
            glm_request r = {sp[i].prompt, sp[i].n_prompt, sp[i].max_tokens, sp[i].sp, NULL, 0, 1, on_event, o};
            CHECK_MSG(glm_sched_submit(s, &r, NULL) == GLM_OK, "%s", glm_last_error());
            int rc;
            while ((rc = glm_sched_step(s)) > 0) {}
            CHECK_MSG(rc == 0, "step: %d %s", rc, glm_last_error());
            glm_sched_get_stats(s, &st1);
            const unsigned long long cached = (unsigned long long)(st1.cached_tokens - st0.cached_tokens);
            const unsigned long long drafted = (unsigned long long)(st1.draft_tokens - st0.draft_tokens);
            if (pass) {
                CHECK_MSG(cached == (unsigned long long)want_cached[i], "request %d: %llu tokens from the cache, want %d", i, cached,
                          want_cached[i]);
                CHECK_MSG(drafted > 0 && st1.accepted_tokens > st0.accepted_tokens, "request %d drafted %llu tokens", i, drafted);
                CHECK_MSG(same_tokens(&got[i], &ref[i]), "request %d: drafting gave other tokens than plain decoding", i);
            } else {
                CHECK(cached == (unsigned long long)(i ? 48 : 0) && drafted == 0);
            }
        }
        glm_sched_cache_clear(s);
        glm_sched_free(s);
        CHECK_MSG(glm_ctx_kv_pages_free(c) == glm_ctx_kv_pages_total(c), "%d of %d pages free", glm_ctx_kv_pages_free(c),
                  glm_ctx_kv_pages_total(c));
    }
    glm_ctx_free(c);
}

TEST(drafting_sampled_requests_repeat_with_their_seed) {
    if (!tiny()) { CHECK(0); return; }
    static spec_t sp[16];
    static out_t a[16], b[16], c[16];
    for (int i = 0; i < 16; i++) {
        make_spec(&sp[i], 500 + i, 5 + (i * 23) % 70, 10 + (i * 7) % 30, 0);
        sp[i].sp.temp = 0.7f;
        sp[i].sp.top_k = 20;
        if (i % 4 == 1) sp[i].sp.repeat_penalty = 1.3f;
    }
    glm_sched_stats st = run_draft(sp, NULL, 16, a, 16, 0, 0, 1, 2);
    run_draft(sp, NULL, 16, b, 16, 0, 0, 1, 2);
    for (int i = 0; i < 16; i++) {
        CHECK_MSG(same_tokens(&a[i], &b[i]), "request %d differs between two runs", i);
        CHECK(a[i].fin == GLM_FINISH_LENGTH && a[i].n == sp[i].max_tokens);
    }
    CHECK(st.draft_tokens > 0 && st.accepted_tokens > 0);
    fprintf(stderr, "  sampled draft 2: %llu of %llu drafts accepted (%.3f)\n", (unsigned long long)st.accepted_tokens,
            (unsigned long long)st.draft_tokens, (double)st.accepted_tokens / (double)(st.draft_tokens ? st.draft_tokens : 1));
    /* the same requests one at a time: a request's draws do not depend on the others */
    for (int i = 0; i < 16; i += 5) {
        run_draft(sp + i, NULL, 1, c + i, 1, 0, 0, 0, 2);
        CHECK_MSG(same_tokens(&a[i], &c[i]), "request %d alone differs from it in the batch", i);
    }
}

TEST(drafting_needs_the_mtp_layer) {
    if (!tiny()) { CHECK(0); return; }
    glm_ctx *c = make_ctx(2, 0);
    glm_sched_params p = glm_sched_default_params();
    p.n_draft = 2;
    glm_sched *s = NULL;
    CHECK(glm_sched_new(c, &p, &s) == GLM_ERR_ARG && strstr(glm_last_error(), "params.mtp = 1"));
    p.n_draft = GLM_SPEC_MAX_DRAFT + 1;
    CHECK(glm_sched_new(c, &p, &s) == GLM_ERR_ARG);
    p.n_draft = -1;
    CHECK(glm_sched_new(c, &p, &s) == GLM_ERR_ARG);
    CHECK(s == NULL);
    glm_ctx_free(c);
}

TEST(zz_cleanup) {
    glm_tokenizer_free(tok);
    glm_model_free(model);
    tok = NULL;
    model = NULL;
}

RUN_TESTS()
