/* test-bench.c - glm-bench and the context's sizes: test sizes whose context or KV page
 * count passes INT32_MAX are refused (tool and library) rather than wrapped, a run that
 * needs more memory than the machine has is refused with both numbers before anything
 * is allocated, the device is checked before anything runs on it, usage errors exit 2
 * and run-time failures 1, each with its message, and a small run reports every test
 * (and warns past the model's trained context). */
#include "glm.h"
#include "test.h"
#include "tool-run.h"

#include <stdint.h>
#include <time.h>

/* Every command runs with its allocations capped at about 4 GB (TEST_ULIMIT_V): a run
 * that allocates before it checks fails fast instead of filling the machine. */
#define BENCH TEST_ULIMIT_V(4000000) "%s/glm-bench"
#define BF16_DIR "tests/data/tiny-bf16"

/* Runs glm-bench with args; checks the exit status and that stderr holds msg. */
static void expect_error(const char *args, int status, const char *msg) {
    tool_result t;
    int rc = run_tool(&t, BENCH " %s", tool_bin(), args);
    CHECK_MSG(rc == status && strstr(t.err, msg), "glm-bench %s: exit %d (want %d), stderr: %s(want '%s')", args, rc, status,
              t.err, msg);
    CHECK_MSG(t.out[0] == 0, "glm-bench %s printed '%s' on stdout", args, t.out);
    tool_result_free(&t);
}

TEST(sizes_past_int32_are_refused) {
    expect_error("-m " BF16_DIR " --device cpu -p 2147483647 -n 1 -r 1", 2,
                 "glm-bench: error: -p 2147483647: a test of 2147483647 tokens needs a context of 2147483663 tokens, more than 2147483647");
    expect_error("-m " BF16_DIR " --device cpu -p 16 -n 2147483647 -r 1", 2, "glm-bench: error: -n 2147483647: a test of");
    expect_error("-m " BF16_DIR " --device cpu -p 16 -n 4 -b 2147483647 -r 1", 2,
                 "glm-bench: error: -b 2147483647: 2147483647 sequences of 32 tokens need 4294967294 KV pages");
    /* representable, but more KV cache than any machine here has: a memory error, exit 1 */
    expect_error("-m " BF16_DIR " --device cpu -p 16 -n 2147483000 -r 1", 1, "glm-bench: error: this run needs about");
}

TEST(ctx_refuses_a_page_table_past_int32) {
    glm_model *m = NULL;
    CHECK(glm_model_load(BF16_DIR, NULL, &m) == GLM_OK);
    if (!m) return;
    glm_ctx_params cp = glm_ctx_default_params();
    cp.n_ctx = INT32_MAX;  /* 134217728 pages a sequence, 2^31 for 16 sequences */
    cp.n_seq_max = 16;
    cp.n_batch = 16;
    glm_ctx *c = NULL;
    int rc = glm_ctx_new(m, &cp, &c);
    CHECK_MSG(rc == GLM_ERR_ARG && c == NULL, "rc %d (%s)", rc, glm_last_error());
    CHECK_MSG(strstr(glm_last_error(), "n_seq_max 16 x n_ctx 2147483647 needs 2147483648 KV pages"), "%s", glm_last_error());
    glm_ctx_free(c);
    glm_model_free(m);
}

/* Seconds on a monotonic clock. */
static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The number printed after key in text, or -1. */
static double value_after(const char *text, const char *key) {
    const char *p = strstr(text, key);
    return p ? atof(p + strlen(key)) : -1;
}

TEST(memory_is_checked_before_allocating) {
    /* GLM-4.7 in BF16, every layer: about 700 GB of weights */
    glm_hparams hp;
    glm_model *shapes = NULL;
    CHECK(glm_preset("glm-4.7", 0, &hp) == GLM_OK);
    CHECK(glm_model_synthetic(&hp, GLM_FMT_BF16, 0, 1234, &shapes) == GLM_OK);
    const double weights = shapes ? (double)glm_model_n_bytes(shapes) : 0;
    glm_model_free(shapes);
    tool_result t;
    const double t0 = now();
    int rc = run_tool(&t, BENCH " --synthetic glm-4.7 --fmt bf16 --device cpu -p 16 -n 1 -r 1 --no-probe", tool_bin());
    const double dt = now() - t0;
    const double need = value_after(t.err, "needs about "), w = value_after(t.err, "(weights ");
    const char *av = strstr(t.err, "GB available (MemAvailable in /proc/meminfo)");
    fprintf(stderr, "  %.2f s: %s", dt, t.err);
    CHECK_MSG(rc == 1 && need > 0 && av, "exit %d, stderr: %s", rc, t.err);
    CHECK_MSG(fabs(w * 1e9 - weights) < 0.001 * weights, "weights %.1f GB printed, the model has %.1f GB", w, weights / 1e9);
    CHECK(need >= w);
    CHECK(t.out[0] == 0);
    CHECK(dt < 5);  /* refused at once, not after generating weights */
    tool_result_free(&t);
}

TEST(device_is_checked_before_anything_runs) {
    if (glm_cuda_available()) SKIP("a usable GPU is here: --device cuda is valid");
    tool_result t;
    int rc = run_tool(&t, BENCH " --device cuda -m tests/data/no-model -p 16 -n 1 -r 1", tool_bin());
    CHECK_MSG(rc == 1 && strstr(t.err, "glm-bench: error: --device cuda: "), "exit %d, stderr: %s", rc, t.err);
    CHECK_MSG(!strstr(t.err, "cannot load model") && !strstr(t.err, "bandwidth"), "stderr: %s", t.err);
    tool_result_free(&t);
}

TEST(usage_errors_exit_2_run_time_failures_exit_1) {
    expect_error("--synthetic nope", 2, "glm-bench: error: --synthetic: unknown preset 'nope'");
    expect_error("--synthetic tiny --fmt q4", 2, "glm-bench: error: --fmt expects bf16, fp8ch or fp8blk, got 'q4'");
    expect_error("-m " BF16_DIR " -o xml", 2, "glm-bench: error: -o expects md, json or csv, got 'xml'");
    expect_error("-m " BF16_DIR " -r 0", 2, "glm-bench: error: -r expects an integer in [1, 1000], got '0'");
    expect_error("-m " BF16_DIR " --kv-type q4", 2, "glm-bench: error: --kv-type expects bf16 or fp8, got 'q4'");
    expect_error("-m " BF16_DIR " -p 1,x", 2, "glm-bench: error: -p expects a list like 512,2048, got '1,x'");
    expect_error("-m " BF16_DIR " -b 0", 2, "glm-bench: error: -b: values must be positive, got 0");
    expect_error("-m " BF16_DIR " --bogus", 2, "glm-bench: error: unknown argument '--bogus'");
    expect_error("-m tests/data/no-model --device cpu", 1, "glm-bench: error: cannot load model");
}

TEST(small_run_reports_every_test_and_warns_past_the_trained_context) {
    tool_result t;
    int rc = run_tool(&t, BENCH " -m " BF16_DIR " --device cpu -p 32 -n 4 -b 1,2 -r 2 -o csv", tool_bin());
    CHECK_MSG(rc == 0, "exit %d, stderr: %s", rc, t.err);
    int lines = 0;
    for (const char *p = t.out; *p; p++) lines += *p == '\n';
    CHECK_MSG(lines == 4 && strstr(t.out, ",pp32,32,") && strstr(t.out, ",tg4 b1,4,") && strstr(t.out, ",tg4 b2,8,"),
              "stdout: %s", t.out);
    CHECK_MSG(!strstr(t.err, "warning"), "stderr: %s", t.err);
    tool_result_free(&t);
    /* a prefill past tiny-bf16's 512 trained positions: the warning every tool prints */
    rc = run_tool(&t, BENCH " -m " BF16_DIR " --device cpu -p 600 -n 1 -r 1", tool_bin());
    CHECK_MSG(rc == 0 && strstr(t.err, "glm-bench: warning: context size 600 is past the model's trained context (512 tokens)"),
              "exit %d, stderr: %s", rc, t.err);
    tool_result_free(&t);
}

RUN_TESTS_IN_TMP("glm-test-bench")
