/* test-gpu-mtp.c - the MTP layer and speculative decoding on CUDA (tests/data/tiny-mtp).
 *
 *   - the main model's hidden states (read inside the pass's CUDA graph) and the draft
 *     head's logits against the CPU backend, with float32 activations: within 1e-2 of the
 *     largest value (the BF16 KV cache is the only extra rounding);
 *   - greedy speculative decoding at --draft 1, 2, 3 gives plain greedy decoding's tokens
 *     on the same CUDA context, on 50 prompts of 1 to 128 ids, 24 tokens each; once with
 *     the trained-free MTP layer of the fixture (few drafts accepted) and once with an MTP
 *     layer that copies the main model (drafts accepted: the accept, bonus and rollback
 *     paths), every step checking that the sequence holds exactly its pages. Verify steps
 *     of 2 to 4 tokens and plain steps of one run through different kernels; float32
 *     activations keep their logits equal up to the order of the sums.
 * Needs a GPU; GLM_TEST_QUICK=1 runs fewer prompts (for compute-sanitizer). */
#include "backend.h"
#include "scheduler.h"
#include "test.h"
#include "spec-util.h"

#include <stdint.h>

#define DIR "tests/data/tiny-mtp"

static glm_model *load_mtp(void) {
    glm_model_params mp = glm_model_default_params();
    mp.mtp = GLM_MTP_REQUIRE;
    glm_model *m = NULL;
    CHECK_MSG(glm_model_load(DIR, &mp, &m) == GLM_OK, "%s: %s", DIR, glm_last_error());
    return m;
}

static glm_ctx *mtp_ctx(glm_model *m, glm_device dev) {
    glm_ctx_params cp = glm_ctx_default_params();
    cp.device = dev;
    cp.n_ctx = 256;
    cp.n_batch = 64;
    cp.n_threads = 2;
    cp.n_kv_pages = 64;
    cp.kv_type = dev == GLM_DEVICE_CPU ? GLM_KV_F32 : GLM_KV_BF16;
    cp.mtp = 1;
    glm_ctx *c = NULL;
    CHECK_MSG(glm_ctx_new(m, &cp, &c) == GLM_OK, "%s: %s", dev == GLM_DEVICE_CPU ? "cpu" : "cuda", glm_last_error());
    return c;
}


/* max |a - b| / max |b| over n values (infinite on NaN). */
static double rel_max(const float *a, const float *b, size_t n) {
    double d = 0, mx = 0;
    for (size_t i = 0; i < n; i++) {
        if (a[i] != a[i]) return INFINITY;
        d = fmax(d, fabs(a[i] - b[i]));
        mx = fmax(mx, fabs(b[i]));
    }
    return mx > 0 ? d / mx : d;
}

TEST(draft_logits_cuda_vs_cpu) {
    glm_model *m = load_mtp();
    if (!m) return;
    test_f32_paths(1);
    glm_ctx *c[2] = { mtp_ctx(m, GLM_DEVICE_CPU), mtp_ctx(m, GLM_DEVICE_CUDA) };
    const int D = glm_model_hparams(m)->n_embd, V = glm_model_hparams(m)->n_vocab;
    enum { N = 24 };
    int32_t ids[N];
    for (int i = 0; i < N; i++) ids[i] = (i * 97 + 5) % V;
    float *h[2], *g[2], *lg[2];
    for (int d = 0; d < 2; d++) {
        h[d] = malloc(sizeof(float) * N * D);
        g[d] = malloc(sizeof(float) * (N - 1) * D);
        lg[d] = malloc(sizeof(float) * (N - 1) * V);
        memset(h[d], 0xff, sizeof(float) * N * D);
        memset(lg[d], 0xff, sizeof(float) * (N - 1) * V);
    }
    for (int d = 0; c[0] && c[1] && d < 2; d++) {
        glm_batch b = { N, ids, NULL, NULL };
        /* twice on CUDA: the first pass captures its graph, the second replays it */
        for (int rep = 0; rep < 1 + d; rep++) {
            glm_ctx_seq_clear(c[d], 0);
            CHECK_MSG(glm_ctx_decode_hidden(c[d], &b, h[d]) == GLM_OK, "hidden: %s", glm_last_error());
        }
        for (int p = 0; p + 1 < N; p++)
            CHECK_MSG(glm_ctx_mtp_forward(c[d], 0, p, 1, ids + p + 1, h[d] + (size_t)p * D, g[d] + (size_t)p * D,
                                          lg[d] + (size_t)p * V) == GLM_OK, "mtp row %d: %s", p, glm_last_error());
    }
    const double eh = rel_max(h[1], h[0], (size_t)N * D), el = rel_max(lg[1], lg[0], (size_t)(N - 1) * V);
    const double eg = rel_max(g[1], g[0], (size_t)(N - 1) * D);
    fprintf(stderr, "  CUDA vs CPU: hidden states %.3g, MTP hidden %.3g, draft logits %.3g of the largest (bound 1e-2)\n", eh, eg,
            el);
    CHECK(eh <= 1e-2 && eg <= 1e-2 && el <= 1e-2);
    int agree = 0;
    for (int p = 0; p + 1 < N; p++) agree += spec_argmax(lg[1] + (size_t)p * V, V) == spec_argmax(lg[0] + (size_t)p * V, V);
    CHECK_MSG(agree == N - 1, "draft argmax agreement %d/%d", agree, N - 1);
    for (int d = 0; d < 2; d++) { free(h[d]); free(g[d]); free(lg[d]); glm_ctx_free(c[d]); }
    test_f32_paths(0);
    glm_model_free(m);
}

static void greedy_equal_cuda(int mimic) {
    glm_model *m = load_mtp();
    if (!m) return;
    test_f32_paths(1);
    float *buf = mimic ? mtp_mimic(m) : NULL;
    glm_ctx *c = mtp_ctx(m, GLM_DEVICE_CUDA);
    if (c) spec_check_drafts(c, getenv("GLM_TEST_QUICK") ? 4 : 50, 24, NULL, mimic, "CUDA ");
    glm_ctx_free(c);
    test_f32_paths(0);
    glm_model_free(m);
    free(buf);
}

TEST(greedy_draft_equals_plain_cuda) { greedy_equal_cuda(0); }
TEST(greedy_draft_equals_plain_cuda_accepting) { greedy_equal_cuda(1); }

int main(void) {
    if (!glm_cuda_available()) {
        printf("no CUDA device\n0 passed, 1 failed\n");
        return 1;
    }
    return run_tests_();
}
