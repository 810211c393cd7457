/* test-gpu-tp.c - tensor parallel on CUDA (lib/tp.c, docs/PARALLEL.md), on one GPU.
 *
 * Shared-GPU mode: N ranks on the one GPU, each a CUDA backend over its slice, the sums
 * staged through host memory. Against the same model at --tp 1 on CUDA:
 *   - tiny checkpoints with 8 KV heads, 16 experts, intermediate sizes 8 does not divide
 *     and a vocabulary of 509 (tests/data/tiny-tp), --tp 2, 4, 8 x --moe-split tp, ep:
 *     every prompt row's logits and teacher-forced decode steps (the continuation of
 *     --tp 1). With float32 activations (GLM_CUDA_GEMV_MAX, GLM_CUDA_MMA_MIN large) the
 *     ranks' products differ from one rank's only in the order of the sums: within 1e-4
 *     of the largest logit, argmax identical at every row. On the default path (FP8 or
 *     BF16 activations, BF16 cuBLASLt outputs per rank), --tp 1 and every --tp N against
 *     the CPU backend within 0.45 of the largest logit, argmax >= 80% (this fixture
 *     amplifies FP8 activation rounding: --tp 1 alone measures 0.30 and 43/48).
 *   - a full-width GLM-4.7 slice (hidden 5120, 96/8 heads, a dense layer of 12288, a MoE
 *     layer of 16 experts of 1536, vocab 151552, FP8 per channel) at --tp 8, both splits:
 *     an 80-token prefill (its last 16 rows) and two decode steps: with float32
 *     activations within 1e-3 of --tp 1's largest logit, argmax identical; on the default
 *     path, --tp 1 and --tp 8 against the CPU backend within the single-GPU bounds (rms
 *     8e-2, worst logit 0.3, argmax >= 75%).
 *   - a block-scaled checkpoint whose slices start inside a 128 x 128 block is refused
 *     with a message naming the tensor.
 *   - an injected failure on rank 3 of 8 ends the pass with an error naming rank 3.
 * NCCL with one rank through the whole path: one process as rank 0 of a world of 1
 * (dist_init file:, RANK=0 WORLD_SIZE=1): rendezvous, communicator, graph-captured
 * all-reduces and logits gather, teardown; its logits equal --tp 1's within 1e-6.
 * glm-run --tp 8 --gpus 0 announces the shared-GPU mode and continues as --tp 1 does.
 * GLM_TEST_QUICK=1 leaves out the full-width slice (for compute-sanitizer). */
#include "glm.h"
#include "test.h"
#include "tool-run.h"
#include "refs.h"

#include <stdint.h>
#include <unistd.h>

#define N_PROMPT 40
#define N_GEN 8

static const int TPS[] = { 2, 4, 8 };
static const int SPLITS[] = { GLM_MOE_SPLIT_TP, GLM_MOE_SPLIT_EP };
static const char *const SPLIT_NAMES[] = { "tp", "ep" };


/* A CUDA context of n_tp ranks on GPU 0 (shared when n_tp > 1); NULL with the error kept. */
static glm_ctx *tp_ctx(glm_model *m, int n_tp, int split, int n_batch, int *rc) {
    static const int gpu0[1] = { 0 };
    glm_ctx_params cp = glm_ctx_default_params();
    cp.device = GLM_DEVICE_CUDA;
    cp.n_ctx = 128;
    cp.n_batch = n_batch;
    cp.n_kv_pages = 32;
    cp.kv_type = GLM_KV_BF16;
    cp.n_tp = n_tp;
    cp.moe_split = split;
    cp.gpus = gpu0;
    cp.n_gpus = 1;
    glm_ctx *c = NULL;
    *rc = glm_ctx_new(m, &cp, &c);
    return c;
}

/* Every prompt row's logits, then N_GEN steps fed `gen` (or, with gen_out, greedy from
 * the logits, written to gen_out): out [N_PROMPT + N_GEN, V]. Returns a status. */
static int run(glm_ctx *c, int V, const int32_t *gen, int32_t *gen_out, float *out) {
    int32_t toks[N_PROMPT];
    int8_t want[N_PROMPT];
    for (int i = 0; i < N_PROMPT; i++) { toks[i] = (i * 37 + 11) % V; want[i] = 1; }
    glm_batch b = { N_PROMPT, toks, NULL, want };
    int rc = glm_ctx_decode(c, &b);
    if (rc) return rc;
    for (int i = 0; i < N_PROMPT; i++) memcpy(out + (size_t)i * V, glm_ctx_logits(c, i), sizeof(float) * V);
    const float *last = glm_ctx_logits(c, N_PROMPT - 1);
    for (int s = 0; s < N_GEN; s++) {
        int32_t t = gen ? gen[s] : argmax(last, V);
        if (gen_out) gen_out[s] = t;
        glm_batch one = { 1, &t, NULL, NULL };
        if ((rc = glm_ctx_decode(c, &one))) return rc;
        last = glm_ctx_logits(c, 0);
        memcpy(out + (size_t)(N_PROMPT + s) * V, last, sizeof(float) * V);
    }
    return GLM_OK;
}

/* Compares got [rows, V] with ref: max |diff| <= tol x max |ref|, argmax agreement. */
static void compare(const char *what, const float *got, const float *ref, int rows, int V, double tol, double min_agree) {
    const size_t n = (size_t)rows * V;
    double md = 0, mx = 0;
    int nan = 0, agree = 0;
    for (size_t i = 0; i < n; i++) {
        if (got[i] != got[i]) nan = 1;
        if (fabs(got[i] - ref[i]) > md) md = fabs(got[i] - ref[i]);
        if (fabs(ref[i]) > mx) mx = fabs(ref[i]);
    }
    for (int r = 0; r < rows; r++) agree += argmax(got + (size_t)r * V, V) == argmax(ref + (size_t)r * V, V);
    double mr, rr;
    int row;
    row_errors(got, ref, rows, V, &mr, &rr, &row);
    fprintf(stderr, "  %s: max |diff| %.3g of max |logit| %.3g (%.3g), rms rel %.3g, worst row %.3g, argmax %d/%d\n",
            what, md, mx, md / mx, rel_err(got, ref, n), mr, agree, rows);
    CHECK_MSG(!nan, "%s: NaN in the logits", what);
    CHECK_MSG(md <= tol * mx, "%s: max |diff| %.3g of the largest logit (tolerance %.3g)", what, md / mx, tol);
    CHECK_MSG(mr <= 1.5 * tol, "%s: row %d off by %.3g of its largest logit (tolerance %.3g)", what, row, mr, 1.5 * tol);
    CHECK_MSG(agree >= min_agree * rows, "%s: argmax agreement %d/%d", what, agree, rows);
}

static void tiny_tp(const char *dir) {
    glm_model *m = NULL;
    CHECK_MSG(glm_model_load(dir, NULL, &m) == GLM_OK, "%s: %s", dir, glm_last_error());
    if (!m) return;
    const int V = glm_model_hparams(m)->n_vocab, rows = N_PROMPT + N_GEN;
    float *ref = malloc(sizeof(float) * rows * V), *cpu = malloc(sizeof(float) * rows * V);
    float *got = malloc(sizeof(float) * rows * V);
    int32_t gen[N_GEN];
    int rc;
    /* --tp 1 on CUDA with float32 activations picks the continuation; the CPU backend
     * runs it too (the default path's reference) */
    test_f32_paths(1);
    glm_ctx *c = tp_ctx(m, 1, GLM_MOE_SPLIT_TP, 24, &rc);
    CHECK_MSG(c && run(c, V, NULL, gen, ref) == GLM_OK, "%s --tp 1: %s", dir, glm_last_error());
    glm_ctx_free(c);
    glm_ctx_params cp = glm_ctx_default_params();
    cp.n_ctx = 128;
    cp.n_batch = 24;
    cp.kv_type = GLM_KV_F32;
    c = NULL;
    CHECK_MSG(glm_ctx_new(m, &cp, &c) == GLM_OK && run(c, V, gen, NULL, cpu) == GLM_OK, "%s cpu: %s", dir, glm_last_error());
    glm_ctx_free(c);
    for (int f32 = 1; f32 >= 0; f32--) {
        test_f32_paths(f32);
        for (int t = f32 ? 0 : -1; t < (int)(sizeof TPS / sizeof TPS[0]); t++)
            for (int s = 0; s < 2; s++) {
                const int n_tp = t >= 0 ? TPS[t] : 1;
                if (n_tp == 1 && s) continue;
                char what[256];
                snprintf(what, sizeof what, "%s --tp %d --moe-split %s, %s", dir, n_tp, SPLIT_NAMES[s],
                         f32 ? "f32 activations, vs --tp 1" : "default path, vs the CPU");
                memset(got, 0xff, sizeof(float) * rows * V);  /* NaN: rows left unwritten fail */
                c = tp_ctx(m, n_tp, SPLITS[s], 24, &rc);
                CHECK_MSG(c, "%s: %s", what, glm_last_error());
                if (!c) continue;
                CHECK_MSG(n_tp == 1 || (!strcmp(glm_ctx_tp_kind(c), "shared-gpu") && glm_ctx_tp_ranks(c) == n_tp),
                          "%s: kind %s, %d ranks", what, glm_ctx_tp_kind(c), glm_ctx_tp_ranks(c));
                rc = run(c, V, gen, NULL, got);
                CHECK_MSG(rc == GLM_OK, "%s: %s", what, glm_last_error());
                long n_coll = 0;
                glm_ctx_comm_seconds(c, &n_coll);
                glm_ctx_free(c);
                if (rc) continue;
                /* two all-reduces a layer and one gather a pass: 1 + N_GEN passes */
                const int layers = glm_model_hparams(m)->n_layer;
                CHECK_MSG(n_tp == 1 || n_coll >= (long)(1 + N_GEN) * (2 * layers + 1), "%s: %ld collectives", what, n_coll);
                /* float32 activations: the ranks change only the order of the sums. The
                 * default path against the CPU backend: this random fixture amplifies the
                 * FP8 activation rounding beyond the single-GPU fixtures (H200, --tp 1:
                 * 0.30 of the largest logit, worst row 0.45, argmax 43/48 on fp8ch; bf16
                 * 6e-3; --tp 8 0.37 and 0.18, the per-rank BF16 product outputs), so the
                 * bound is 0.45 of the largest logit (0.675 a row), argmax >= 80% (H200:
                 * --tp 2 on fp8ch 0.39, worst row 0.52, 41/48) */
                if (f32) compare(what, got, ref, rows, V, 1e-4, 1.0);
                else compare(what, got, cpu, rows, V, 0.45, 0.8);
            }
    }
    test_f32_paths(0);
    free(ref);
    free(cpu);
    free(got);
    glm_model_free(m);
}

TEST(tiny_tp_bf16) { tiny_tp("tests/data/tiny-tp/bf16"); }
TEST(tiny_tp_fp8_channel) { tiny_tp("tests/data/tiny-tp/fp8ch"); }

/* Block scales: a rank's rows of a 20-row expert start at row 10, inside the first block. */
TEST(tp_block_slices_refused) {
    glm_model *m = NULL;
    CHECK(glm_model_load("tests/data/tiny-fp8blk", NULL, &m) == GLM_OK);
    if (!m) return;
    int rc;
    glm_ctx *c = tp_ctx(m, 2, GLM_MOE_SPLIT_TP, 8, &rc);
    fprintf(stderr, "  %s\n", glm_last_error());
    CHECK(!c && rc == GLM_ERR_NOT_IMPLEMENTED);
    CHECK(strstr(glm_last_error(), "block-scaled") && strstr(glm_last_error(), "rank 1"));
    glm_ctx_free(c);
    glm_model_free(m);
}

TEST(tp_failing_rank_named) {
    glm_model *m = NULL;
    CHECK(glm_model_load("tests/data/tiny-tp/fp8ch", NULL, &m) == GLM_OK);
    if (!m) return;
    setenv("GLM_COMM_FAIL_RANK", "3", 1);
    setenv("GLM_COMM_FAIL_AFTER", "5", 1);
    int rc;
    glm_ctx *c = tp_ctx(m, 8, GLM_MOE_SPLIT_TP, 8, &rc);
    unsetenv("GLM_COMM_FAIL_RANK");
    unsetenv("GLM_COMM_FAIL_AFTER");
    CHECK_MSG(c, "%s", glm_last_error());
    if (c) {
        int32_t t[4] = { 1, 2, 3, 4 };
        glm_batch b = { 4, t, NULL, NULL };
        rc = glm_ctx_decode(c, &b);
        fprintf(stderr, "  %s\n", glm_last_error());
        CHECK(rc != GLM_OK);
        CHECK_MSG(strstr(glm_last_error(), "rank 3"), "%s", glm_last_error());
        glm_ctx_free(c);
    }
    glm_model_free(m);
}

/* One process as rank 0 of a world of one, through NCCL: the graph-captured path. */
TEST(nccl_one_rank_world) {
    glm_model *m = NULL;
    CHECK(glm_model_load("tests/data/tiny-tp/fp8ch", NULL, &m) == GLM_OK);
    if (!m) return;
    const int V = glm_model_hparams(m)->n_vocab, rows = N_PROMPT + N_GEN;
    float *ref = malloc(sizeof(float) * rows * V), *got = malloc(sizeof(float) * rows * V);
    memset(got, 0xff, sizeof(float) * rows * V);
    int32_t gen[N_GEN];
    int rc;
    glm_ctx *c = tp_ctx(m, 1, GLM_MOE_SPLIT_TP, 24, &rc);
    CHECK_MSG(c && run(c, V, NULL, gen, ref) == GLM_OK, "--tp 1: %s", glm_last_error());
    glm_ctx_free(c);
    char spec[64];
    snprintf(spec, sizeof spec, "file:/tmp/glm-test-id-%d", (int)getpid());
    setenv("RANK", "0", 1);
    setenv("WORLD_SIZE", "1", 1);
    setenv("LOCAL_RANK", "0", 1);
    glm_ctx_params cp = glm_ctx_default_params();
    cp.device = GLM_DEVICE_CUDA;
    cp.n_ctx = 128;
    cp.n_batch = 24;
    cp.n_kv_pages = 32;
    cp.dist_init = spec;
    c = NULL;
    rc = glm_ctx_new(m, &cp, &c);
    unsetenv("RANK");
    unsetenv("WORLD_SIZE");
    unsetenv("LOCAL_RANK");
    unlink(spec + 5);
    CHECK_MSG(rc == GLM_OK, "dist_init: %s", glm_last_error());
    if (c) {
        CHECK_MSG(!strcmp(glm_ctx_tp_kind(c), "nccl"), "kind %s", glm_ctx_tp_kind(c));
        rc = run(c, V, gen, NULL, got);
        CHECK_MSG(rc == GLM_OK, "NCCL world of one: %s", glm_last_error());
        long n_coll = 0;
        glm_ctx_comm_seconds(c, &n_coll);
        fprintf(stderr, "  NCCL world of one: %ld collectives enqueued (first passes; graph replays enqueue none)\n", n_coll);
        CHECK(n_coll > 0);
        glm_ctx_free(c);
        if (!rc) compare("NCCL world of one vs --tp 1", got, ref, rows, V, 1e-6, 1.0);
    }
    free(ref);
    free(got);
    glm_model_free(m);
}

/* The full-width slice: 80 prompt tokens (logits of the last 16), two decode steps;
 * out [ROWS, V]. Returns a status. */
enum { FW_T = 80, FW_NO = 16, FW_ROWS = FW_NO + 2 };
static int full_width_run(glm_model *m, glm_device dev, int n_tp, int split, float *out) {
    const int V = glm_model_hparams(m)->n_vocab;
    int32_t toks[FW_T];
    int8_t want[FW_T];
    for (int i = 0; i < FW_T; i++) { toks[i] = (i * 7919 + 13) % V; want[i] = i >= FW_T - FW_NO; }
    memset(out, 0xff, sizeof(float) * FW_ROWS * V);
    int rc;
    glm_ctx *c = NULL;
    if (dev == GLM_DEVICE_CUDA) {
        c = tp_ctx(m, n_tp, split, FW_T, &rc);
    } else {
        glm_ctx_params cp = glm_ctx_default_params();
        cp.n_ctx = 128;
        cp.n_batch = FW_T;
        cp.kv_type = GLM_KV_F32;
        rc = glm_ctx_new(m, &cp, &c);
    }
    if (!c) return rc;
    glm_batch b = { FW_T, toks, NULL, want };
    rc = glm_ctx_decode(c, &b);
    for (int t = 0; !rc && t < FW_NO; t++) memcpy(out + (size_t)t * V, glm_ctx_logits(c, FW_T - FW_NO + t), sizeof(float) * V);
    for (int s = 0; !rc && s < 2; s++) {
        glm_batch one = { 1, &toks[s], NULL, NULL };
        if (!(rc = glm_ctx_decode(c, &one))) memcpy(out + (size_t)(FW_NO + s) * V, glm_ctx_logits(c, 0), sizeof(float) * V);
    }
    glm_ctx_free(c);
    return rc;
}

TEST(full_width_tp8) {
    if (getenv("GLM_TEST_QUICK")) SKIP("GLM_TEST_QUICK: the full-width slice is left out");
    glm_hparams hp;
    CHECK(glm_preset("glm-4.7", 2, &hp) == GLM_OK);
    hp.n_dense_layer = 1;
    hp.n_expert = 16;
    glm_model *m = NULL;
    int rc = glm_model_synthetic(&hp, GLM_FMT_FP8_CHANNEL, 1, 77, &m);
    CHECK_MSG(rc == GLM_OK, "synthetic: %s", glm_last_error());
    if (rc) return;
    const int V = hp.n_vocab;
    const size_t n = (size_t)FW_ROWS * V;
    float *cpu = malloc(sizeof(float) * n), *one = malloc(sizeof(float) * n), *got = malloc(sizeof(float) * n);
    CHECK_MSG(full_width_run(m, GLM_DEVICE_CPU, 1, 0, cpu) == GLM_OK, "cpu: %s", glm_last_error());
    for (int f32 = 1; f32 >= 0; f32--) {
        test_f32_paths(f32);
        if (f32) CHECK_MSG(full_width_run(m, GLM_DEVICE_CUDA, 1, 0, one) == GLM_OK, "--tp 1: %s", glm_last_error());
        for (int s = f32 ? 0 : -1; s < 2; s++) {
            const int n_tp = s < 0 ? 1 : 8, split = s < 0 ? 0 : SPLITS[s];
            char what[160];
            snprintf(what, sizeof what, "full-width fp8-channel --tp %d%s%s, %s", n_tp, s < 0 ? "" : " --moe-split ",
                     s < 0 ? "" : SPLIT_NAMES[s], f32 ? "f32 activations, vs --tp 1" : "default path, vs the CPU");
            rc = full_width_run(m, GLM_DEVICE_CUDA, n_tp, split, got);
            CHECK_MSG(rc == GLM_OK, "%s: %s", what, glm_last_error());
            if (rc) continue;
            if (f32) {  /* the order of the sums only */
                compare(what, got, one, FW_ROWS, V, 1e-3, 1.0);
            } else {    /* the single-GPU default-path bounds: rms 8e-2, worst logit 0.3, argmax 75% */
                const double rr = rel_err(got, cpu, n);
                CHECK_MSG(rr <= 8e-2, "%s: rms rel %.3g", what, rr);
                compare(what, got, cpu, FW_ROWS, V, 0.3, 0.75);
            }
        }
    }
    test_f32_paths(0);
    free(cpu);
    free(one);
    free(got);
    glm_model_free(m);
}

/* The tools: glm-run --tp 8 on one GPU announces the shared-GPU mode and, with float32
 * activations, continues greedily with the ids of --tp 1. */
TEST(glm_run_tp8_one_gpu) {
    const char *B = tool_bin();
    tool_result a = {0}, b = {0};
    const char *env = "GLM_CUDA_GEMV_MAX=100000 GLM_CUDA_MMA_MIN=100000 GLM_CUDA_GEMV_MMA=0";
    const char *args = "-m tests/data/tiny-tp/fp8ch --device cuda --prompt-ids 5,17,33,2,9,101 --print-ids -n 24 --temp 0";
    CHECK_MSG(run_tool(&a, "%s %s/glm-run %s --tp 1", env, B, args) == 0, "%s", a.err);
    CHECK_MSG(run_tool(&b, "%s %s/glm-run %s --tp 8 --gpus 0 --moe-split ep", env, B, args) == 0, "%s", b.err);
    fprintf(stderr, "  --tp 1: %s  --tp 8: %s", a.out ? a.out : "", b.out ? b.out : "");
    CHECK(a.out && b.out && !strcmp(a.out, b.out));
    CHECK_MSG(b.err && strstr(b.err, "8 tensor-parallel ranks on GPU 0") && strstr(b.err, "shared-GPU mode: 8 ranks on 1 GPU"),
              "%s", b.err);
    tool_result_free(&b);
    /* one process as rank 0 of a world of one (--dist-init): NCCL, graphs, the same ids */
    char spec[64];
    snprintf(spec, sizeof spec, "/tmp/glm-test-run-id-%d", (int)getpid());
    CHECK_MSG(run_tool(&b, "RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 %s %s/glm-run %s --dist-init file:%s", env, B, args, spec) == 0,
              "%s", b.err);
    unlink(spec);
    fprintf(stderr, "  --dist-init, a world of one: %s", b.out ? b.out : "");
    CHECK(a.out && b.out && !strcmp(a.out, b.out));
    tool_result_free(&a);
    tool_result_free(&b);
}

int main(void) {
    if (!glm_cuda_available()) {
        printf("no CUDA device\n0 passed, 1 failed\n");
        return 1;
    }
    return run_tests_();
}
