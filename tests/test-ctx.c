/* test-ctx.c - the context's batching and paged KV cache: several sequences in one
 * batch equal each run alone, prompts split over passes equal one pass, a full cache
 * is a warning that changes nothing, and cleared sequences give their pages back; the
 * page accounting at every 16-token boundary, a full sequence in the last slot cleared,
 * and pages reused after a clear giving the logits of a fresh context. */
#include "glm.h"
#include "test.h"
#include "scheduler.h"

#define DIR "tests/data/tiny-fp8ch"

static glm_ctx *new_ctx(glm_model *m, int n_seq, int n_batch, int n_pages) {
    glm_ctx_params cp = glm_ctx_default_params();
    cp.n_ctx = 96;
    cp.n_seq_max = n_seq;
    cp.n_batch = n_batch;
    cp.n_kv_pages = n_pages;
    cp.n_threads = 2;
    glm_ctx *c = NULL;
    if (glm_ctx_new(m, &cp, &c) != GLM_OK) fprintf(stderr, "  %s\n", glm_last_error());
    return c;
}

/* Loads the test checkpoint; a failed load fails the test (NULL). */
static glm_model *load_model(void) {
    glm_model *m = NULL;
    CHECK_MSG(glm_model_load(DIR, NULL, &m) == GLM_OK, "%s: %s", DIR, glm_last_error());
    return m;
}

static float max_diff(const float *a, const float *b, int n) {
    float d = 0;
    for (int i = 0; i < n; i++) d = fmaxf(d, fabsf(a[i] - b[i]));
    return d;
}

TEST(batched_sequences_equal_single) {
    glm_model *m = load_model();
    if (!m) return;
    const int V = glm_model_hparams(m)->n_vocab, n0 = 23, n1 = 37;
    int32_t a[40], b[40];
    for (int i = 0; i < 40; i++) { a[i] = (i * 31 + 7) % V; b[i] = (i * 17 + 3) % V; }
    /* alone */
    float *ra = malloc(sizeof(float) * V), *rb = malloc(sizeof(float) * V);
    glm_ctx *c = new_ctx(m, 1, 64, 0);
    glm_batch ba = { n0, a, NULL, NULL };
    CHECK(glm_ctx_decode(c, &ba) == GLM_OK);
    memcpy(ra, glm_ctx_logits(c, n0 - 1), sizeof(float) * V);
    glm_ctx_seq_clear(c, 0);
    glm_batch bb = { n1, b, NULL, NULL };
    CHECK(glm_ctx_decode(c, &bb) == GLM_OK);
    memcpy(rb, glm_ctx_logits(c, n1 - 1), sizeof(float) * V);
    glm_ctx_free(c);
    /* together, interleaved, in passes of 9 tokens, sequences 2 and 0 */
    c = new_ctx(m, 3, 9, 0);
    int32_t toks[80], seq[80];
    int8_t want[80] = {0};
    int n = 0, ia = 0, ib = 0, last_a = -1, last_b = -1;
    while (ia < n0 || ib < n1) {
        if (ib < n1) { toks[n] = b[ib++]; seq[n] = 0; if (ib == n1) last_b = n; n++; }
        if (ia < n0 && (n % 3 || ib == n1)) { toks[n] = a[ia++]; seq[n] = 2; if (ia == n0) last_a = n; n++; }
    }
    want[last_a] = want[last_b] = 1;
    glm_batch both = { n, toks, seq, want };
    CHECK(glm_ctx_decode(c, &both) == GLM_OK);
    float da = max_diff(glm_ctx_logits(c, last_a), ra, V), db = max_diff(glm_ctx_logits(c, last_b), rb, V);
    fprintf(stderr, "  batched vs alone: %.3g %.3g\n", da, db);
    CHECK(da < 1e-5f && db < 1e-5f);
    CHECK(glm_ctx_seq_len(c, 2) == n0 && glm_ctx_seq_len(c, 0) == n1 && glm_ctx_seq_len(c, 1) == 0);
    CHECK(glm_ctx_logits(c, 0) == NULL); /* a row that did not ask */
    glm_ctx_free(c);
    free(ra);
    free(rb);
    glm_model_free(m);
}

TEST(kv_full_is_a_warning) {
    glm_model *m = load_model();
    if (!m) return;
    glm_ctx *c = new_ctx(m, 2, 64, 3); /* 3 pages = 48 tokens */
    int32_t t[40];
    for (int i = 0; i < 40; i++) t[i] = 5 + i;
    glm_batch b = { 40, t, NULL, NULL };
    CHECK(glm_ctx_decode(c, &b) == GLM_OK);
    CHECK(glm_ctx_kv_pages_free(c) == 0);
    int32_t s1[20] = {0};
    for (int i = 0; i < 20; i++) s1[i] = 1;
    glm_batch b1 = { 20, t, s1, NULL };
    CHECK(glm_ctx_decode(c, &b1) == GLM_WARN_KV_FULL);
    CHECK(strstr(glm_last_error(), "KV cache full") != NULL);
    CHECK(glm_ctx_seq_len(c, 1) == 0 && glm_ctx_seq_len(c, 0) == 40);
    CHECK(glm_ctx_seq_clear(c, 0) == GLM_OK);
    CHECK(glm_ctx_kv_pages_free(c) == 3);
    CHECK(glm_ctx_decode(c, &b1) == GLM_OK);
    CHECK(glm_ctx_seq_clear(c, 7) == GLM_ERR_ARG);
    int32_t bad = 100000;
    glm_batch bbad = { 1, &bad, NULL, NULL };
    CHECK(glm_ctx_decode(c, &bbad) == GLM_ERR_ARG);
    glm_ctx_free(c);
    glm_model_free(m);
}

/* Decodes n tokens (ids from `from`) into sequence seq; returns the status. */
static int feed(glm_ctx *c, int seq, int n, int from) {
    int32_t t[96], sq[96];
    for (int i = 0; i < n; i++) { t[i] = (from + i * 13) % 500 + 3; sq[i] = seq; }
    glm_batch b = { n, t, sq, NULL };
    return glm_ctx_decode(c, &b);
}

TEST(kv_page_accounting) {
    glm_model *m = load_model();
    if (!m) return;
    glm_ctx *c = new_ctx(m, 3, 96, 14); /* 14 pages of 16 tokens; n_ctx 96 = 6 pages a sequence */
    if (!c) { glm_model_free(m); return; }
    CHECK(glm_ctx_kv_pages_total(c) == 14 && glm_ctx_kv_pages_free(c) == 14);
    /* sequence 0 one token at a time across two page boundaries: a page at 1, 17, 33 */
    for (int len = 1; len <= 33; len++) {
        CHECK(feed(c, 0, 1, len) == GLM_OK);
        const int used = (len + 15) / 16;
        CHECK_MSG(glm_ctx_kv_pages_free(c) == 14 - used, "sequence 0 at %d tokens: %d pages free, expected %d",
                  len, glm_ctx_kv_pages_free(c), 14 - used);
    }
    CHECK(glm_ctx_seq_len(c, 0) == 33);
    /* sequence 1: 32 tokens in one batch take exactly 2 pages, 16 more exactly 1 */
    CHECK(feed(c, 1, 32, 100) == GLM_OK);
    CHECK(glm_ctx_kv_pages_free(c) == 14 - 3 - 2);
    CHECK(feed(c, 1, 16, 200) == GLM_OK);
    CHECK(glm_ctx_kv_pages_free(c) == 14 - 3 - 3);
    /* the last slot filled to n_ctx: all six pages of its page table */
    CHECK(feed(c, 2, 90, 300) == GLM_OK);
    CHECK(glm_ctx_kv_pages_free(c) == 2);
    CHECK(feed(c, 2, 6, 400) == GLM_OK);
    CHECK(glm_ctx_seq_len(c, 2) == 96 && glm_ctx_kv_pages_free(c) == 2);
    /* two pages left: 15 tokens fit in sequence 0's third page, a 16th needs a fourth
     * (there is one), then sequence 1 at 48 needs a page per 16 more */
    CHECK(feed(c, 0, 15, 500) == GLM_OK);
    CHECK(glm_ctx_kv_pages_free(c) == 2);
    CHECK(feed(c, 1, 17, 600) == GLM_OK); /* 48 -> 65: pages 4 and 5 */
    CHECK(glm_ctx_kv_pages_free(c) == 0);
    CHECK(feed(c, 1, 15, 700) == GLM_OK); /* 65 -> 80: fills page 5, no new page */
    CHECK(feed(c, 1, 1, 800) == GLM_WARN_KV_FULL); /* 81 would need a sixth */
    CHECK(feed(c, 0, 1, 900) == GLM_WARN_KV_FULL); /* 48 -> 49 would need a fourth */
    CHECK(glm_ctx_seq_len(c, 0) == 48 && glm_ctx_seq_len(c, 1) == 80);
    /* clearing the last slot gives back all six pages, the first slot its three */
    CHECK(glm_ctx_seq_clear(c, 2) == GLM_OK);
    CHECK(glm_ctx_seq_len(c, 2) == 0 && glm_ctx_kv_pages_free(c) == 6);
    CHECK(glm_ctx_seq_clear(c, 0) == GLM_OK);
    CHECK(glm_ctx_kv_pages_free(c) == 9);
    CHECK(glm_ctx_seq_clear(c, 0) == GLM_OK); /* twice: nothing more */
    CHECK(glm_ctx_kv_pages_free(c) == 9);
    CHECK(glm_ctx_seq_clear(c, 3) == GLM_ERR_ARG && glm_ctx_seq_clear(c, -1) == GLM_ERR_ARG);
    glm_ctx_free(c);
    glm_model_free(m);
}

TEST(reused_pages_equal_fresh) {
    /* a sequence written over pages that held other tokens gives the logits of a fresh
     * context, bit for bit (nothing of the old tokens is read) */
    glm_model *m = load_model();
    if (!m) return;
    const int V = glm_model_hparams(m)->n_vocab;
    glm_ctx *c = new_ctx(m, 2, 96, 8);
    if (!c) { glm_model_free(m); return; }
    CHECK(feed(c, 0, 40, 7) == GLM_OK);
    float *fresh = malloc(sizeof(float) * V);
    memcpy(fresh, glm_ctx_logits(c, 39), sizeof(float) * V);
    CHECK(feed(c, 1, 64, 900) == GLM_OK);   /* four more pages: seven of eight written */
    CHECK(glm_ctx_seq_clear(c, 0) == GLM_OK);
    CHECK(glm_ctx_seq_clear(c, 1) == GLM_OK);
    CHECK(feed(c, 1, 90, 1234) == GLM_OK);  /* six pages of other tokens */
    CHECK(glm_ctx_seq_clear(c, 1) == GLM_OK);
    CHECK(glm_ctx_kv_pages_free(c) == 8);
    CHECK(feed(c, 1, 25, 7) == GLM_OK);     /* the same 40 tokens in two batches, slot 1 */
    CHECK(feed(c, 1, 15, 7 + 25 * 13) == GLM_OK);
    const float *again = glm_ctx_logits(c, 14);
    CHECK(again && max_diff(again, fresh, V) == 0.0f);
    free(fresh);
    glm_ctx_free(c);
    glm_model_free(m);
}

TEST(context_limit) {
    glm_model *m = load_model();
    if (!m) return;
    glm_ctx *c = new_ctx(m, 1, 128, 0);
    int32_t t[100] = {0};
    glm_batch b = { 97, t, NULL, NULL };
    CHECK(glm_ctx_decode(c, &b) == GLM_ERR_ARG); /* n_ctx is 96 */
    CHECK(strstr(glm_last_error(), "context size") != NULL);
    glm_ctx_free(c);
    glm_model_free(m);
}

TEST(shared_pages_are_counted) {
    /* full pages shared by two sequences: a page goes back to the free list only when its
     * last holder lets it go; a sequence is never cut inside a page it shares */
    glm_model *m = load_model();
    if (!m) return;
    glm_ctx *c = new_ctx(m, 2, 64, 8);
    int32_t t[40];
    for (int i = 0; i < 40; i++) t[i] = (i * 37) % 200;
    int32_t s0[40] = {0};
    glm_batch b = { 40, t, s0, NULL };
    CHECK(glm_ctx_decode(c, &b) == GLM_OK);                        /* seq 0: 40 tokens, 3 pages */
    CHECK(glm_ctx_kv_pages_free(c) == 5);
    int32_t pages[2] = { glm_ctx_seq_page(c, 0, 0), glm_ctx_seq_page(c, 0, 1) };
    CHECK(glm_ctx_seq_share(c, 1, pages, 2, 1) == GLM_ERR_ARG);   /* MTP rows without the MTP layer */
    CHECK(glm_ctx_seq_share(c, 1, pages, 2, 0) == GLM_OK);        /* seq 1: its first 32 */
    CHECK(glm_ctx_seq_len(c, 1) == 32 && glm_ctx_page_refs(c, pages[0]) == 2 && glm_ctx_page_refs(c, pages[1]) == 2);
    CHECK(glm_ctx_seq_share(c, 1, pages, 2, 0) == GLM_ERR_ARG);   /* not empty */
    CHECK(glm_ctx_kv_pages_free(c) == 5);
    CHECK(glm_ctx_seq_truncate(c, 1, 20) == GLM_ERR_ARG && strstr(glm_last_error(), "shared"));
    CHECK(glm_ctx_seq_len(c, 1) == 32);
    CHECK(glm_ctx_seq_truncate(c, 1, 16) == GLM_OK);              /* drops its hold on page 1 */
    CHECK(glm_ctx_page_refs(c, pages[1]) == 1 && glm_ctx_kv_pages_free(c) == 5);
    int32_t one = 5, s1 = 1;
    glm_batch b1 = { 1, &one, &s1, NULL };
    CHECK(glm_ctx_decode(c, &b1) == GLM_OK);                       /* token 17 of seq 1: a page of its own */
    CHECK(glm_ctx_seq_page(c, 1, 1) != pages[1] && glm_ctx_kv_pages_free(c) == 4);
    CHECK(glm_ctx_seq_clear(c, 0) == GLM_OK);                      /* page 0 still held by seq 1 */
    CHECK(glm_ctx_page_refs(c, pages[0]) == 1 && glm_ctx_kv_pages_free(c) == 6);
    CHECK(glm_ctx_seq_clear(c, 1) == GLM_OK);
    CHECK(glm_ctx_kv_pages_free(c) == 8 && glm_ctx_page_refs(c, pages[0]) == 0);
    CHECK(glm_ctx_seq_share(c, 1, pages, 1, 0) == GLM_ERR_ARG);   /* a free page */
    glm_ctx_free(c);
    glm_model_free(m);
}

RUN_TESTS()
