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

/* -d: each sequence holds the depth before the decode test: in the name, in the pages it
 * held (2 sequences of 24 + 4 tokens: 2 pages each of the 4 sized for 24 + 4 + 2) */
TEST(depth_fills_the_cache_before_decode_tests) {
    tool_result t;
    int rc = run_tool(&t, BENCH " -m " BF16_DIR " --device cpu -p 0 -n 4 -b 2 -d 24 -r 1 --no-probe -o csv", tool_bin());
    CHECK_MSG(rc == 0 && strstr(t.out, ",tg4 b2 @ d24,8,"), "exit %d: %s%s", rc, t.out, t.err);
    const char *row = strstr(t.out, "tg4 b2 @ d24");
    const char *last = row ? strrchr(row, ',') : NULL;
    CHECK_MSG(last && atof(last + 1) == 1.0, "the KV column: %s", t.out);
    tool_result_free(&t);
    rc = run_tool(&t, BENCH " -m " BF16_DIR " --device cpu --serve -d 8", tool_bin());
    CHECK_MSG(rc == 2 && strstr(t.err, "-d: not with --serve"), "exit %d: %s", rc, t.err);
    tool_result_free(&t);
}

/* ---- tensor parallel: per-rank bytes, collective time, the projection ---- */

/* The number after "key": inside the JSON object of test name in text, or NAN. */
static double test_num(const char *text, const char *name, const char *key) {
    char pat[96], k[96];
    snprintf(pat, sizeof pat, "\"test\": \"%s\"", name);
    snprintf(k, sizeof k, "\"%s\": ", key);
    const char *o = strstr(text, pat);
    if (!o) return NAN;
    const char *end = strchr(o, '}'), *v = strstr(o, k);
    return v && end && v < end ? atof(v + strlen(k)) : NAN;
}

/* A minimal JSON syntax check: one value and nothing after it. */
static const char *json_value(const char *p);
static const char *json_ws(const char *p) { while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') p++; return p; }
static const char *json_string(const char *p) {
    if (*p++ != '"') return NULL;
    for (; *p && *p != '"'; p++)
        if (*p == '\\' && !*++p) return NULL;
    return *p == '"' ? p + 1 : NULL;
}
static const char *json_value(const char *p) {
    p = json_ws(p);
    if (*p == '"') return json_string(p);
    if (*p == '{' || *p == '[') {
        const char close = *p == '{' ? '}' : ']';
        p = json_ws(p + 1);
        if (*p == close) return p + 1;
        for (;;) {
            if (close == '}') {
                if (!(p = json_string(json_ws(p)))) return NULL;
                p = json_ws(p);
                if (*p++ != ':') return NULL;
            }
            if (!(p = json_value(p))) return NULL;
            p = json_ws(p);
            if (*p == close) return p + 1;
            if (*p++ != ',') return NULL;
        }
    }
    char *e;
    strtod(p, &e);
    return e > p ? e : NULL;
}
static int json_ok(const char *text) {
    const char *e = json_value(text);
    return e && *json_ws(e) == 0;
}

#define TINY_TP "-m " BF16_DIR " --device cpu -t 2 -p 8 -n 4 -b 1,2 -r 1 --no-probe"

TEST(tp_reports_rank_bytes_and_collective_time) {
    static const char *const tests[] = { "tg4 b1", "tg4 b2" };
    tool_result t;
    int rc = run_tool(&t, BENCH " " TINY_TP " -o json", tool_bin());
    CHECK_MSG(rc == 0 && json_ok(t.out), "exit %d: %s%s", rc, t.out, t.err);
    double one[2];   /* TP 1: the bytes a step reads, the decode floor's bytes */
    for (int i = 0; i < 2; i++) {
        one[i] = test_num(t.out, tests[i], "floor_bytes_or_flops");
        CHECK_MSG(one[i] > 0, "%s: %s", tests[i], t.out);
    }
    CHECK_MSG(!strstr(t.out, "rank_bytes_per_step") && !strstr(t.out, "projected") && !strstr(t.out, "n_tp"), "%s", t.out);
    tool_result_free(&t);
    double ep_b1 = 0, tp_b1 = 0;
    for (int split = 0; split < 2; split++) {
        rc = run_tool(&t, BENCH " " TINY_TP " --tp 2%s -o json", tool_bin(), split ? " --moe-split ep" : " --moe-split tp");
        CHECK_MSG(rc == 0 && json_ok(t.out), "exit %d: %s%s", rc, t.out, t.err);
        CHECK(strstr(t.out, "\"n_tp\": 2,") && strstr(t.out, split ? "\"moe_split\": \"ep\"" : "\"moe_split\": \"tp\"") &&
              strstr(t.out, "\"tp_kind\": \"local\""));
        for (int i = 0; i < 2; i++) {
            const double rb = test_num(t.out, tests[i], "rank_bytes_per_step"), cm = test_num(t.out, tests[i], "coll_ms_per_step");
            /* a rank reads less than the whole model, and more than half of it: the router and
             * the embedding rows are on every rank (and with ep the busiest rank holds more
             * than half of the experts touched) */
            CHECK_MSG(rb < one[i] && rb > 0.5 * one[i], "--tp 2 %s %s: rank bytes %.0f, TP 1 %.0f", split ? "ep" : "tp",
                      tests[i], rb, one[i]);
            CHECK_MSG(test_num(t.out, tests[i], "floor_bytes_or_flops") == rb, "%s", t.out);   /* the floor's bytes */
            CHECK_MSG(cm > 0 && cm < 1000, "coll ms/step %g", cm);
            if (i == 0) *(split ? &ep_b1 : &tp_b1) = rb;
        }
        CHECK(isnan(test_num(t.out, "pp8", "rank_bytes_per_step")));   /* decode tests only */
        tool_result_free(&t);
    }
    /* one sequence touches 3 of the 8 experts: the busiest of 2 ranks holds more than half */
    CHECK_MSG(ep_b1 > tp_b1, "ep %.0f, tp %.0f", ep_b1, tp_b1);
    rc = run_tool(&t, BENCH " " TINY_TP " --tp 2", tool_bin());
    CHECK_MSG(rc == 0 && strstr(t.out, "| KV | rank bytes/step | coll ms/step |") && strstr(t.out, " kB | ") &&
              strstr(t.out, "coll ms/step: host time rank 0 spent in the collectives") && !strstr(t.out, "projected"),
              "exit %d: %s%s", rc, t.out, t.err);
    tool_result_free(&t);
    rc = run_tool(&t, BENCH " " TINY_TP " --tp 2 -o csv", tool_bin());
    CHECK_MSG(rc == 0 && strstr(t.out, ",kv_peak,rank_bytes_per_step,coll_ms_per_step\n"), "%s", t.out);
    tool_result_free(&t);
}

TEST(project_prints_the_projected_step) {
    tool_result t;
    int rc = run_tool(&t, BENCH " " TINY_TP " --tp 2 --project", tool_bin());
    CHECK_MSG(rc == 0 && strstr(t.out, "| tg4 b1 projected |") && strstr(t.out, "| tg4 b2 projected |") &&
              strstr(t.out, "| own ms/step | modelled coll ms/step | projected ms/step | projected t/s |") &&
              strstr(t.out, "nccl-tests issue 212") && strstr(t.out, "Not a measurement on 2 GPUs") &&
              strstr(t.err, "rank 0 of 2 alone (projection)"), "exit %d: %s%s", rc, t.out, t.err);
    CHECK(!strstr(t.out, "pp8 projected"));
    tool_result_free(&t);
    rc = run_tool(&t, BENCH " " TINY_TP " --tp 2 --moe-split ep --project -o json", tool_bin());
    CHECK_MSG(rc == 0 && json_ok(t.out), "exit %d: %s%s", rc, t.out, t.err);
    CHECK(strstr(t.out, "\"coll_alpha_us\": 20.000") && strstr(t.out, "\"coll_busbw_gbs\": 370.000"));
    for (int b = 1; b <= 2; b++) {
        char name[16];
        snprintf(name, sizeof name, "tg4 b%d", b);
        const double own = test_num(t.out, name, "own_ms_per_step"), mc = test_num(t.out, name, "modelled_coll_ms_per_step");
        const double pm = test_num(t.out, name, "projected_ms_per_step"), pt = test_num(t.out, name, "projected_tps");
        CHECK_MSG(own > 0 && fabs(pm - (own + mc)) < 1e-5 && fabs(pt - 1000.0 * b / pm) < 1e-3 * pt, "%s: %s", name, t.out);
        CHECK(test_num(t.out, name, "rank_bytes_per_step") > 0 && test_num(t.out, name, "coll_ms_per_step") > 0);
        /* 2 x 3 all-reduces of b x 160 x 4 bytes and a gather of b x 512 x 4, at 20 us + bytes / 370 GB/s */
        const double want = 1e3 * (6 * (20e-6 + b * 640.0 / 370e9) + 20e-6 + b * 2048.0 / 370e9 * 0.5);
        CHECK_MSG(fabs(mc - want) < 1e-5, "%s: modelled %.6f ms, want %.6f", name, mc, want);
    }
    CHECK(isnan(test_num(t.out, "pp8", "projected_tps")));
    tool_result_free(&t);
    /* the model's parameters are flags */
    rc = run_tool(&t, BENCH " " TINY_TP " --tp 2 --project --coll-alpha-us 0 --coll-busbw-gbs 1 -o json", tool_bin());
    CHECK_MSG(rc == 0 && fabs(test_num(t.out, "tg4 b1", "modelled_coll_ms_per_step") - 1e3 * (6 * 640 + 1024) / 1e9) < 1e-6,
              "%s", t.out);
    tool_result_free(&t);
    rc = run_tool(&t, BENCH " " TINY_TP " --tp 2 --project -o csv", tool_bin());
    CHECK_MSG(rc == 0 && strstr(t.out, ",rank_bytes_per_step,coll_ms_per_step,own_ms_per_step,modelled_coll_ms_per_step,"
                                       "projected_ms_per_step,projected_tps\n"), "%s", t.out);
    tool_result_free(&t);
    expect_error("-m " BF16_DIR " --device cpu --project", 2, "glm-bench: error: --project: projects a step over --tp N ranks");
    expect_error("-m " BF16_DIR " --coll-busbw-gbs 0", 2, "--coll-busbw-gbs");
}

RUN_TESTS_IN_TMP("glm-test-bench")
