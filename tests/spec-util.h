/* spec-util.h - shared by the speculative-decoding tests (tests/test-mtp.c on the CPU,
 * tests/test-gpu-mtp.c on CUDA): an MTP layer that copies the main model (so drafts get
 * accepted), plain and speculative greedy continuations, and the fixed prompts. Needs
 * backend.h (the model's internals), scheduler.h (glm_ctx_model) and test.h. */
#ifndef GLM_TEST_SPEC_UTIL_H
#define GLM_TEST_SPEC_UTIL_H

#include <stdint.h>
#include <stdlib.h>

/* Index of the largest of l[0..n) (the first on ties). */
static inline int32_t spec_argmax(const float *l, int n) {
    int32_t b = 0;
    for (int i = 1; i < n; i++) if (l[i] > l[b]) b = i;
    return b;
}

/* Makes the MTP layer a copy of the main model's last step, so that drafts get accepted:
 * eh_proj passes hnorm(h) through (the embedding half is zero), the block adds nothing
 * (o_proj and every down projection zero), hnorm = the final norm and shared_head.norm
 * = 1: the draft's argmax is the main model's at the same position, so a draft is
 * accepted wherever the main model repeats a token. Returns the buffers to free. */
static float *mtp_mimic(glm_model *m) {
    const glm_hparams *hp = &m->hp;
    const int64_t D = hp->n_embd, Q = (int64_t)hp->n_head * hp->head_dim, F = (int64_t)hp->n_ff_exp;
    const size_t n_eh = (size_t)(2 * D * D), n_o = (size_t)(D * Q), n_dn = (size_t)(D * F * (hp->n_expert_shared > 1 ? hp->n_expert_shared : 1));
    float *buf = calloc(n_eh + n_o + n_dn + 2 * (size_t)D, sizeof(float));
    float *eh = buf, *zo = eh + n_eh, *zd = zo + n_o, *hn = zd + n_dn, *one = hn + D;
    for (int64_t i = 0; i < D; i++) { eh[i * 2 * D + D + i] = 1; hn[i] = glm_weight_get1(&m->out_norm, i); one[i] = 1; }
    glm_layer *L = &m->layers[hp->n_layer];
#define F32(w, p) do { (w).dtype = GLM_DT_F32; (w).data = (p); (w).scale_kind = GLM_SCALE_NONE; (w).scale = NULL; } while (0)
    F32(m->mtp_eh_proj, eh);
    F32(m->mtp_hnorm, hn);
    F32(m->mtp_head_norm, one);
    F32(L->wo, zo);
    for (int e = 0; e < hp->n_expert; e++) F32(L->exp_down[e], zd);
    if (hp->n_expert_shared > 0) F32(L->sh_down, zd);
#undef F32
    return buf;
}

/* Greedy continuation of prompt[n] by plain decoding: out[G]. */
static int plain_greedy(glm_ctx *c, const int32_t *prompt, int n, int G, int32_t *out) {
    const int V = glm_ctx_model(c)->hp.n_vocab;
    glm_ctx_seq_clear(c, 0);
    glm_batch b = { n, prompt, NULL, NULL };
    if (glm_ctx_decode(c, &b)) return -1;
    for (int i = 0, last = n - 1; i < G; i++, last = 0) {   /* the logits row of the last token fed */
        out[i] = spec_argmax(glm_ctx_logits(c, last), V);
        if (i + 1 == G) break;
        glm_batch b1 = { 1, &out[i], NULL, NULL };
        if (glm_ctx_decode(c, &b1)) return -1;
    }
    glm_ctx_seq_clear(c, 0);
    return 0;
}

/* Continuation by speculative decoding (greedy or sampled, as s was made): out[G]; checks
 * the pages held after each step. Returns 0 or -1. */
static int spec_greedy(glm_spec *s, glm_ctx *c, const int32_t *prompt, int n, int G, int32_t *out) {
    int got = 0, k;
    int32_t step[GLM_SPEC_MAX_DRAFT + 1];
    if (glm_spec_prefill(s, 0, prompt, n, &out[got++])) return -1;
    while (got < G) {
        if (glm_spec_step(s, 0, step, &k)) return -1;
        for (int j = 0; j < k && got < G; j++) out[got++] = step[j];
        const int len = glm_ctx_seq_len(c, 0), ml = glm_ctx_mtp_len(c, 0), hold = ((len > ml ? len : ml) + GLM_PAGE - 1) / GLM_PAGE;
        if (glm_ctx_kv_pages_free(c) != glm_ctx_kv_pages_total(c) - hold) {
            fprintf(stderr, "  pages: %d free of %d, the sequence holds %d tokens (MTP %d)\n", glm_ctx_kv_pages_free(c),
                    glm_ctx_kv_pages_total(c), len, ml);
            return -1;
        }
    }
    glm_spec_seq_clear(s, 0);
    return glm_ctx_kv_pages_free(c) == glm_ctx_kv_pages_total(c) ? 0 : -1;
}

/* The fixed prompts: n_prompts of 1..128 ids from an LCG. */
static int make_prompt(int i, int V, int32_t *p) {
    uint64_t x = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
    x ^= x >> 29;
    const int n = 1 + (int)(x % 128);
    for (int t = 0; t < n; t++) { x = x * 6364136223846793005ull + 1442695040888963407ull; p[t] = (int32_t)((x >> 33) % (uint64_t)V); }
    return n;
}

/* Plain decoding of prompt[n] with glm_sampler_sample under sp (greedy at temp 0), the
 * history as glm-run passes it (the prompt, then the tokens generated): out[G]. */
static int plain_sampled(glm_ctx *c, const glm_sampler_params *sp, const int32_t *prompt, int n, int G, int32_t *out) {
    const int V = glm_ctx_model(c)->hp.n_vocab;
    int32_t *h = malloc(sizeof(int32_t) * (size_t)(n + G));
    glm_sampler *smp = glm_sampler_new(sp);
    int rc = h && smp ? 0 : -1;
    if (!rc) memcpy(h, prompt, sizeof(int32_t) * (size_t)n);
    glm_ctx_seq_clear(c, 0);
    glm_batch b = { n, prompt, NULL, NULL };
    if (!rc && glm_ctx_decode(c, &b)) rc = -1;
    for (int i = 0, last = n - 1; !rc && i < G; i++, last = 0) {
        out[i] = h[n + i] = glm_sampler_sample(smp, glm_ctx_logits(c, last), V, h, n + i);
        if (out[i] < 0) rc = -1;
        if (rc || i + 1 == G) break;
        glm_batch b1 = { 1, &out[i], NULL, NULL };
        if (glm_ctx_decode(c, &b1)) rc = -1;
    }
    glm_ctx_seq_clear(c, 0);
    glm_sampler_free(smp);
    free(h);
    return rc;
}

/* Speculative output at draft 1, 2, 3 equals plain decoding on n_prompts prompts of G
 * tokens on c (greedy; with pen, its penalties on both sides and plain decoding through
 * glm_sampler_sample), each step checking the pages held; prints the acceptance (mimic:
 * some drafts must be accepted) with dev in the line. Returns how many plain continuations
 * the penalties changed (pen only). */
static int spec_check_drafts(glm_ctx *c, int n_prompts, int G, const glm_sampler_params *pen, int mimic, const char *dev) {
    const int V = glm_ctx_model(c)->hp.n_vocab;
    int32_t prompt[128], want[64], got[64];
    int bad = 0, changed = 0;
    for (int nd = 1; nd <= 3; nd++) {
        glm_sampler_params sp = pen ? *pen : glm_sampler_default_params();
        sp.temp = 0;
        glm_spec *s = NULL;
        CHECK_MSG(glm_spec_new(c, nd, &sp, &s) == GLM_OK, "%s", glm_last_error());
        if (!s) break;
        for (int i = 0; i < n_prompts; i++) {
            const int n = make_prompt(i, V, prompt);
            CHECK((pen ? plain_sampled(c, &sp, prompt, n, G, want) : plain_greedy(c, prompt, n, G, want)) == 0);
            if (pen && nd == 1) {   /* the penalties change the output (of most prompts) */
                int32_t bare[64];
                CHECK(plain_greedy(c, prompt, n, G, bare) == 0);
                changed += memcmp(bare, want, sizeof(int32_t) * G) != 0;
            }
            int rc = spec_greedy(s, c, prompt, n, G, got);
            CHECK_MSG(rc == 0, "draft %d prompt %d: %s", nd, i, glm_last_error());
            if (rc == 0 && memcmp(want, got, sizeof(int32_t) * G) && bad++ < 3) {
                int j = 0;
                while (want[j] == got[j]) j++;
                CHECK_MSG(0, "draft %d prompt %d (%d ids): token %d is %d, plain decoding gives %d", nd, i, n, j, got[j], want[j]);
            }
        }
        glm_spec_stats st;
        glm_spec_get_stats(s, &st);
        fprintf(stderr, "  %sdraft %d%s%s: %llu steps, %llu of %llu drafts accepted (%.3f), %.2f tokens a step\n", dev, nd,
                mimic ? " (mimic)" : "", pen ? (pen->repeat_last_n < 0 ? " (penalties, all)" : " (penalties, window)") : "",
                (unsigned long long)st.steps, (unsigned long long)st.accepted, (unsigned long long)st.drafted,
                st.drafted ? (double)st.accepted / st.drafted : 0.0, st.steps ? (double)st.emitted / st.steps : 0.0);
        if (mimic) CHECK(st.accepted > 0);
        glm_spec_free(s);
    }
    CHECK(bad == 0);
    return changed;
}

#endif
