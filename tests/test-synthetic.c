/* test-synthetic.c - synthetic checkpoints (glm-convert --synthetic) load and run in
 * all three weight formats; the in-memory synthetic model equals the written one.
 * (BF16 -> FP8 conversion: tests/test-convert.c, every tensor in both formats.) */
#include "glm.h"
#include "internal.h"
#include "test.h"

#include <sys/stat.h>
#include <unistd.h>

#define tmp test_tmp

/* Last-position logits of a short prompt; returns a malloc'd [n_vocab] array or NULL. */
static float *run_prompt(glm_model *m) {
    glm_ctx_params cp = glm_ctx_default_params();
    cp.n_ctx = 64;
    cp.n_threads = 2;
    glm_ctx *c = NULL;
    if (glm_ctx_new(m, &cp, &c) != GLM_OK) { fprintf(stderr, "  %s\n", glm_last_error()); return NULL; }
    int32_t prompt[20];
    for (int i = 0; i < 20; i++) prompt[i] = (i * 37 + 5) % glm_model_hparams(m)->n_vocab;
    glm_batch b = { 20, prompt, NULL, NULL };
    float *out = NULL;
    if (glm_ctx_decode(c, &b) == GLM_OK) {
        int V = glm_model_hparams(m)->n_vocab;
        out = malloc(sizeof(float) * V);
        memcpy(out, glm_ctx_logits(c, 19), sizeof(float) * V);
    }
    glm_ctx_free(c);
    return out;
}

static void check_format(glm_weight_format fmt, const char *name) {
    glm_hparams hp;
    CHECK(glm_preset("tiny", 2, &hp) == GLM_OK);
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", tmp, name);
    CHECK(glm_synthetic_write(&hp, fmt, dir, 7, NULL, NULL) == GLM_OK);
    glm_model *disk = NULL, *mem = NULL;
    CHECK_MSG(glm_model_load(dir, NULL, &disk) == GLM_OK, "%s", glm_last_error());
    CHECK(glm_model_synthetic(&hp, fmt, 1, 7, &mem) == GLM_OK);
    if (!disk || !mem) goto done;
    CHECK(glm_model_n_params(disk) == glm_model_n_params(mem));
    CHECK(glm_model_n_bytes(disk) == glm_model_n_bytes(mem));
    float *a = run_prompt(disk), *b = run_prompt(mem);
    CHECK(a && b);
    if (a && b) {
        int finite = 1, same = 1;
        float spread = 0;
        for (int v = 0; v < hp.n_vocab; v++) {
            finite &= isfinite(a[v]);
            same &= a[v] == b[v];
            spread = fmaxf(spread, fabsf(a[v] - a[0]));
        }
        CHECK(finite);
        CHECK(same);
        CHECK(spread > 0.01f); /* not a constant output */
    }
    free(a);
    free(b);
done:
    glm_model_free(disk);
    glm_model_free(mem);
}

TEST(synthetic_fp8_channel) { check_format(GLM_FMT_FP8_CHANNEL, "fp8ch"); }
TEST(synthetic_fp8_block) { check_format(GLM_FMT_FP8_BLOCK, "fp8blk"); }
TEST(synthetic_bf16) { check_format(GLM_FMT_BF16, "bf16"); }

TEST(synthetic_glm47_shapes) {
    glm_hparams hp;
    glm_model *m = NULL;
    CHECK(glm_preset("glm-4.7", 4, &hp) == GLM_OK);
    CHECK(glm_model_synthetic(&hp, GLM_FMT_FP8_CHANNEL, 0, 1, &m) == GLM_OK);
    if (!m) return;
    /* 3 dense + 1 MoE layer at full width */
    CHECK(glm_model_hparams(m)->n_dense_layer == 3);
    uint64_t p = glm_model_n_params(m);
    fprintf(stderr, "  glm-4.7 x4 layers: %llu params\n", (unsigned long long)p);
    /* embeddings 2 x 151552 x 5120 + 3 dense layers (325 M each) + 1 MoE layer (3.93 B) */
    CHECK(p > 6400000000ull && p < 6500000000ull);
    glm_model_free(m);
}

RUN_TESTS_IN_TMP("glm-synth")
