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

#endif
