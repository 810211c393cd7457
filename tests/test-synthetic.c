/* test-synthetic.c - synthetic checkpoints (glm-convert --synthetic) load and run in
 * all three weight formats; the in-memory synthetic model equals the written one; a
 * BF16 -> FP8 conversion stays within FP8 rounding of the original weights. */
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

TEST(convert_bf16_to_fp8) {
    const char *bin = getenv("GLM_BIN") ? getenv("GLM_BIN") : "build/bin";
    const char *fmts[2] = { "fp8-channel", "fp8-block" };
    glm_model *ref = NULL;
    CHECK(glm_model_load("tests/data/tiny-bf16", NULL, &ref) == GLM_OK);
    for (int f = 0; f < 2 && ref; f++) {
        char cmd[1024], dir[512];
        snprintf(dir, sizeof dir, "%s/conv-%s", tmp, fmts[f]);
        snprintf(cmd, sizeof cmd, "%s/glm-convert -m tests/data/tiny-bf16 --format %s --out '%s' 2>/dev/null", bin, fmts[f], dir);
        CHECK(system(cmd) == 0);
        glm_model *m = NULL;
        CHECK_MSG(glm_model_load(dir, NULL, &m) == GLM_OK, "%s", glm_last_error());
        if (!m) continue;
        /* every quantised row within FP8 rounding (2^-4 relative, plus the scale's 2^-8) of the original */
        const glm_weight *a = &ref->layers[1].exp_down[3], *b = &m->layers[1].exp_down[3];
        CHECK(b->dtype == GLM_DT_F8E4M3 && b->scale_kind == (f == 0 ? GLM_SCALE_CHANNEL : GLM_SCALE_BLOCK));
        float ra[64], rb[64], worst = 0;
        for (int64_t r = 0; r < a->rows; r++) {
            glm_weight_row(a, r, ra);
            glm_weight_row(b, r, rb);
            float amax = 0;
            for (int k = 0; k < a->cols; k++) amax = fmaxf(amax, fabsf(ra[k]));
            for (int k = 0; k < a->cols; k++) worst = fmaxf(worst, fabsf(ra[k] - rb[k]) / amax);
        }
        fprintf(stderr, "  %s: worst row-relative error %.4f\n", fmts[f], worst);
        CHECK(worst > 0 && worst < 0.07f);
        glm_model_free(m);
    }
    glm_model_free(ref);
}

RUN_TESTS_IN_TMP("glm-synth")
