/* test-perplexity.c - glm-perplexity end to end: --logits-out row by row against the
 * transformers logits and against the library's own forward over each window, the
 * golden perplexity, --ids-file, the KL divergence and the same-top rate of two
 * different models against values computed here from their logits, the base file's
 * -c/--stride check before the run, --kv-type, the trained-context warning, and the
 * exit codes and messages of bad input. */
#include "glm.h"
#include "test.h"
#include "refs.h"
#include "tool-run.h"

#include <stdint.h>

#define PPL "%s/glm-perplexity"
#define BF16_DIR "tests/data/tiny-bf16"
#define FP8_DIR "tests/data/tiny-fp8ch"

/* "1,2,3" for ids[0..n), malloc'd. */
static char *ids_csv(const int32_t *ids, int n) {
    char *s = malloc((size_t)n * 12 + 1), *p = s;
    *p = 0;
    for (int i = 0; i < n; i++) p += sprintf(p, "%s%d", i ? "," : "", ids[i]);
    return s;
}

/* A float32 file as a malloc'd array of *n floats; NULL when unreadable. */
static float *read_f32(const char *path, size_t *n) {
    size_t len = 0;
    char *b = slurp(path, &len);
    *n = len / 4;
    return (float *)b;
}

/* The number printed after key in text, or NAN when key is missing. */
static double value_after(const char *text, const char *key) {
    const char *p = strstr(text, key);
    return p ? atof(p + strlen(key)) : NAN;
}

/* The perplexity transformers computed for tests/data/tiny-ppl (ref.json), or -1. */
static double ref_ppl(void) {
    char *j = slurp("tests/data/tiny-ppl/ref.json", NULL);
    double v = j ? value_after(j, "\"ppl\":") : -1;
    free(j);
    return v;
}

/* Log-softmax of l[0..V) into out (double). */
static void log_softmax(const float *l, int V, double *out) {
    double mx = l[0], s = 0;
    for (int v = 1; v < V; v++) if (l[v] > mx) mx = l[v];
    for (int v = 0; v < V; v++) s += exp(l[v] - mx);
    const double lse = mx + log(s);
    for (int v = 0; v < V; v++) out[v] = l[v] - lse;
}

/* The windows the help describes: window k covers [k*stride, min(k*stride + c, n)) and
 * scores targets from max(b + 1, the previous window's end). For position p, returns
 * the window whose logits --logits-out must hold: the one that scores token p + 1, else
 * the one that ends at p + 1. */
static int window_of(int p, int n, int c, int stride, int *b_out, int *e_out) {
    int prev_e = 0;
    for (int k = 0, b = 0; prev_e < n; k++, b += stride) {
        int e = b + c < n ? b + c : n, first = b + 1 > prev_e ? b + 1 : prev_e;
        if (p + 1 < n && p + 1 >= first && p + 1 < e) { *b_out = b; *e_out = e; return k; }
        prev_e = e;
    }
    prev_e = 0;
    for (int k = 0, b = 0; prev_e < n; k++, b += stride) {
        int e = b + c < n ? b + c : n;
        if (e == p + 1) { *b_out = b; *e_out = e; return k; }
        prev_e = e;
    }
    return -1;
}

TEST(logits_out_every_position_matches_transformers) {
    ref_data r = {0};
    CHECK(ref_load(BF16_DIR, &r) == 0);
    if (!r.prompt) return;
    char *ids = ids_csv(r.prompt, r.n_prompt);
    tool_result t;
    CHECK(run_tool(&t, PPL " -m " BF16_DIR " --ids %s --device cpu --logits-out %s/l.f32", tool_bin(), ids, test_tmp) == 0);
    char want[64];
    snprintf(want, sizeof want, "wrote %d x %d logits", r.n_prompt, r.n_vocab);
    CHECK_MSG(strstr(t.err, want), "stderr: %s", t.err);
    tool_result_free(&t);
    char path[300];
    snprintf(path, sizeof path, "%s/l.f32", test_tmp);
    size_t n = 0;
    float *l = read_f32(path, &n);
    CHECK_MSG(n == (size_t)r.n_prompt * r.n_vocab, "%zu floats, want %d x %d", n, r.n_prompt, r.n_vocab);
    float maxref = 0;
    for (size_t i = 0; i < (size_t)r.n_prompt * r.n_vocab; i++) if (fabsf(r.logits[i]) > maxref) maxref = fabsf(r.logits[i]);
    for (int p = 0; l && n == (size_t)r.n_prompt * r.n_vocab && p < r.n_prompt; p++) {
        float d = 0;
        for (int v = 0; v < r.n_vocab; v++) {
            float x = fabsf(l[(size_t)p * r.n_vocab + v] - r.logits[(size_t)p * r.n_vocab + v]);
            if (x > d) d = x;
        }
        CHECK_MSG(d <= 1e-4f * maxref, "row %d: max |diff| %g against the transformers logits of position %d", p, d, p);
    }
    free(l); free(ids);
    ref_free(&r);
}

/* Checks --logits-out with windows of c moved by stride over the first n ids against the
 * library's forward over each window. */
static void check_windows(const ref_data *r, int n, int c, int stride) {
    char *ids = ids_csv(r->prompt, n);
    tool_result t;
    CHECK(run_tool(&t, PPL " -m " BF16_DIR " --ids %s -c %d --stride %d --device cpu --logits-out %s/w.f32", tool_bin(),
                   ids, c, stride, test_tmp) == 0);
    tool_result_free(&t);
    free(ids);
    char path[300];
    snprintf(path, sizeof path, "%s/w.f32", test_tmp);
    size_t got = 0;
    float *l = read_f32(path, &got);
    const int V = r->n_vocab;
    CHECK_MSG(got == (size_t)n * V, "n %d, -c %d, --stride %d: %zu rows, want %d", n, c, stride, got / V, n);
    glm_model *m = NULL;
    glm_ctx *ctx = NULL;
    CHECK(glm_model_load(BF16_DIR, NULL, &m) == GLM_OK);
    glm_ctx_params cp = glm_ctx_default_params();
    cp.n_ctx = c;
    cp.n_batch = c;
    CHECK(m && glm_ctx_new(m, &cp, &ctx) == GLM_OK);
    int8_t want[64];
    memset(want, 1, sizeof want);
    int bad = 0;
    for (int p = 0; ctx && l && got == (size_t)n * V && p < n; p++) {
        int b = 0, e = 0;
        CHECK(window_of(p, n, c, stride, &b, &e) >= 0);
        if (e <= b) break;
        glm_ctx_seq_clear(ctx, 0);
        glm_batch batch = { e - b, r->prompt + b, NULL, want };
        CHECK(glm_ctx_decode(ctx, &batch) == GLM_OK);
        const float *ref = glm_ctx_logits(ctx, p - b);
        float d = 0, mx = 0;
        for (int v = 0; v < V; v++) {
            float x = fabsf(l[(size_t)p * V + v] - ref[v]);
            if (x > d) d = x;
            if (fabsf(ref[v]) > mx) mx = fabsf(ref[v]);
        }
        if (d > 1e-5f * mx && bad++ < 3)
            fprintf(stderr, "  n %d, -c %d, --stride %d: row %d differs from position %d of window [%d, %d) by %g\n", n, c,
                    stride, p, p, b, e, d);
    }
    CHECK(bad == 0);
    glm_ctx_free(ctx);
    glm_model_free(m);
    free(l);
}

TEST(logits_out_windows_one_row_per_position) {
    ref_data r = {0};
    CHECK(ref_load(BF16_DIR, &r) == 0);
    if (!r.prompt) return;
    check_windows(&r, 40, 16, 16);  /* windows that do not overlap, a short last one */
    check_windows(&r, 33, 16, 16);  /* a last window of one token, which scores nothing */
    check_windows(&r, 40, 16, 6);   /* overlapping windows */
    ref_free(&r);
}

TEST(golden_perplexity_from_an_ids_file) {
    const double ref = ref_ppl();
    CHECK(ref > 1);
    tool_result a;
    CHECK(run_tool(&a, PPL " -m models/glm-tiny --ids-file tests/data/tiny-ppl/heldout.ids -c 256 --device cpu", tool_bin()) == 0);
    const double pa = value_after(a.out, "PPL = ");
    fprintf(stderr, "  PPL %.6f; transformers %.6f\n", pa, ref);
    CHECK_MSG(fabs(pa - ref) / ref < 1e-5, "PPL %.6f, transformers %.6f", pa, ref);
    CHECK_MSG(strstr(a.err, "4080 tokens scored in 16 windows of 256"), "stderr: %s", a.err);
    tool_result_free(&a);
}

TEST(ids_from_stdin_equal_ids_argument) {
    ref_data r = {0};
    CHECK(ref_load(BF16_DIR, &r) == 0);
    if (!r.prompt) return;
    char *ids = ids_csv(r.prompt, r.n_prompt);
    tool_result a, b;
    CHECK(run_tool(&a, PPL " -m " BF16_DIR " --ids %s -c 16 --device cpu", tool_bin(), ids) == 0);
    CHECK(run_tool(&b, "echo '%s' | tr , ' ' | " PPL " -m " BF16_DIR " --ids-file - -c 16 --device cpu", ids, tool_bin()) == 0);
    CHECK(strstr(a.out, "PPL = ") && strcmp(a.out, b.out) == 0);
    tool_result_free(&a);
    tool_result_free(&b);
    free(ids);
    ref_free(&r);
}

TEST(kl_divergence_of_two_models_matches_their_logits) {
    ref_data r = {0};
    CHECK(ref_load(BF16_DIR, &r) == 0);
    if (!r.prompt) return;
    const int n = r.n_prompt, V = r.n_vocab;
    char *ids = ids_csv(r.prompt, n);
    tool_result t;
    /* overlapping windows: every token but the first is scored, row t-1 predicts token t */
    CHECK(run_tool(&t, PPL " -m " BF16_DIR " --ids %s -c 16 --stride 8 --device cpu --kl-divergence-base %s/b.kld "
                   "--logits-out %s/b.f32", tool_bin(), ids, test_tmp, test_tmp) == 0);
    tool_result_free(&t);
    CHECK(run_tool(&t, PPL " -m " FP8_DIR " --ids %s -c 16 --stride 8 --device cpu --kl-divergence-base %s/b.kld "
                   "--kl-divergence --logits-out %s/c.f32", tool_bin(), ids, test_tmp, test_tmp) == 0);
    char path[300];
    size_t nb = 0, nc = 0;
    snprintf(path, sizeof path, "%s/b.f32", test_tmp);
    float *lb = read_f32(path, &nb);
    snprintf(path, sizeof path, "%s/c.f32", test_tmp);
    float *lc = read_f32(path, &nc);
    CHECK(nb == (size_t)n * V && nc == (size_t)n * V);
    if (lb && lc && nb == (size_t)n * V && nc == (size_t)n * V) {
        /* KL(base || run) = sum_v p_base(v) (log p_base(v) - log p_run(v)), in nats */
        double *pb = malloc(sizeof(double) * V), *pc = malloc(sizeof(double) * V), *kl = malloc(sizeof(double) * n);
        double kl_sum = 0, dp = 0;
        int same = 0, k = 0;
        for (int tk = 1; tk < n; tk++, k++) {
            log_softmax(lb + (size_t)(tk - 1) * V, V, pb);
            log_softmax(lc + (size_t)(tk - 1) * V, V, pc);
            double s = 0;
            int tb = 0, tc = 0;
            for (int v = 0; v < V; v++) {
                s += exp(pb[v]) * (pb[v] - pc[v]);
                if (pb[v] > pb[tb]) tb = v;
                if (pc[v] > pc[tc]) tc = v;
            }
            kl[k] = s;
            kl_sum += s;
            dp += exp(pc[r.prompt[tk]]) - exp(pb[r.prompt[tk]]);
            same += tb == tc;
        }
        double kmax = 0;
        for (int i = 0; i < k; i++) if (kl[i] > kmax) kmax = kl[i];  /* 99.9% of 39 values: the largest */
        const double want_kld = kl_sum / k, want_same = 100.0 * same / k, want_dp = 100.0 * dp / k;
        const double got_kld = value_after(t.out, "Mean KLD: "), got_q = value_after(t.out, "99.9% KLD: ");
        const double got_dp = value_after(t.out, "Mean dp: "), got_same = value_after(t.out, "Same top token: ");
        fprintf(stderr, "  mean KLD %.6f (computed %.6f), 99.9%% %.6f (%.6f), dp %.4f %% (%.4f), same top %.2f %% (%.2f)\n",
                got_kld, want_kld, got_q, kmax, got_dp, want_dp, got_same, want_same);
        CHECK(want_kld > 1e-3 && same < k);  /* two different models: the comparison means something */
        CHECK_NEAR(got_kld, want_kld, 2e-6 + 1e-5 * want_kld);
        CHECK_NEAR(got_q, kmax, 2e-6 + 1e-5 * kmax);
        CHECK_NEAR(got_dp, want_dp, 2e-4);
        CHECK_NEAR(got_same, want_same, 0.006);
        free(pb); free(pc); free(kl);
    }
    tool_result_free(&t);
    free(lb); free(lc); free(ids);
    ref_free(&r);
}

TEST(kl_divergence_base_records_window_and_is_checked_first) {
    ref_data r = {0};
    CHECK(ref_load(BF16_DIR, &r) == 0);
    if (!r.prompt) return;
    char *ids = ids_csv(r.prompt, r.n_prompt);
    tool_result t;
    CHECK(run_tool(&t, PPL " -m " BF16_DIR " --ids %s -c 16 --stride 8 --device cpu --kl-divergence-base %s/w.kld",
                   tool_bin(), ids, test_tmp) == 0);
    tool_result_free(&t);
    /* a model directory that does not exist: the mismatch is found before anything loads or runs */
    CHECK(run_tool(&t, PPL " -m %s/no-model --ids %s -c 20 --stride 8 --device cpu --kl-divergence-base %s/w.kld "
                   "--kl-divergence", tool_bin(), test_tmp, ids, test_tmp) == 1);
    CHECK_MSG(strstr(t.err, "w.kld was made with -c 16, this run has -c 20"), "stderr: %s", t.err);
    tool_result_free(&t);
    CHECK(run_tool(&t, PPL " -m %s/no-model --ids %s -c 16 --stride 4 --device cpu --kl-divergence-base %s/w.kld "
                   "--kl-divergence", tool_bin(), test_tmp, ids, test_tmp) == 1);
    CHECK_MSG(strstr(t.err, "w.kld was made with --stride 8, this run has --stride 4"), "stderr: %s", t.err);
    tool_result_free(&t);
    CHECK(run_tool(&t, PPL " -m %s/no-model --ids %s -c 16 --stride 8 --chunks 2 --device cpu --kl-divergence-base %s/w.kld "
                   "--kl-divergence", tool_bin(), test_tmp, ids, test_tmp) == 1);
    CHECK_MSG(strstr(t.err, "w.kld scored 39 tokens, this run scores 23"), "stderr: %s", t.err);
    tool_result_free(&t);
    /* the same windows over other ids */
    r.prompt[5] = (r.prompt[5] + 1) % r.n_vocab;
    char *other = ids_csv(r.prompt, r.n_prompt);
    CHECK(run_tool(&t, PPL " -m %s/no-model --ids %s -c 16 --stride 8 --device cpu --kl-divergence-base %s/w.kld "
                   "--kl-divergence", tool_bin(), test_tmp, other, test_tmp) == 1);
    CHECK_MSG(strstr(t.err, "token 5 is") && strstr(t.err, "not the same input"), "stderr: %s", t.err);
    tool_result_free(&t);
    /* a file of the format that did not record them */
    CHECK(run_tool(&t, "printf 'GLMKLD1\\000' > %s/v1.kld && " PPL " -m " BF16_DIR " --ids %s --device cpu "
                   "--kl-divergence-base %s/v1.kld --kl-divergence", test_tmp, tool_bin(), ids, test_tmp) == 1);
    CHECK_MSG(strstr(t.err, "v1.kld: a KL-divergence base file of an older glm-perplexity"), "stderr: %s", t.err);
    tool_result_free(&t);
    free(ids); free(other);
    ref_free(&r);
}

TEST(kv_type_and_trained_context_warning) {
    tool_result a, b;
    CHECK(run_tool(&a, PPL " -m " BF16_DIR " --ids 5,6,7,8,9,10 --device cpu", tool_bin()) == 0);
    CHECK(run_tool(&b, PPL " -m " BF16_DIR " --ids 5,6,7,8,9,10 --device cpu --kv-type fp8", tool_bin()) == 0);
    CHECK(strcmp(a.out, b.out) == 0 && strstr(a.out, "PPL = "));  /* the CPU keeps its cache in float32 */
    CHECK(strstr(a.err, "warning") == NULL);
    tool_result_free(&a);
    tool_result_free(&b);
    /* 600 ids in one window: past tiny-bf16's 512 trained positions */
    char path[300];
    snprintf(path, sizeof path, "%s/600.ids", test_tmp);
    FILE *f = fopen(path, "w");
    for (int i = 0; f && i < 600; i++) fprintf(f, "%d ", (i * 7) % 512);
    if (f) fclose(f);
    CHECK(run_tool(&a, PPL " -m " BF16_DIR " --ids-file %s --device cpu", tool_bin(), path) == 0);
    CHECK_MSG(strstr(a.err, "glm-perplexity: warning: context size 600 is past the model's trained context (512 tokens)"),
              "stderr: %s", a.err);
    tool_result_free(&a);
}

/* Runs the arguments, checks the exit status and that stderr holds the message. */
static void expect_error(const char *args, int status, const char *msg) {
    tool_result t;
    int rc = run_tool(&t, PPL " %s", tool_bin(), args);
    CHECK_MSG(rc == status && strstr(t.err, msg), "glm-perplexity %s: exit %d (want %d), stderr: %s(want '%s')", args, rc,
              status, t.err, msg);
    CHECK_MSG(t.out[0] == 0, "glm-perplexity %s printed '%s' on stdout", args, t.out);
    tool_result_free(&t);
}

TEST(usage_errors_exit_2_run_time_failures_exit_1) {
    expect_error("-m " BF16_DIR " --ids 1,2,3 --kv-type q4", 2, "glm-perplexity: error: --kv-type expects bf16 or fp8, got 'q4'");
    expect_error("-m " BF16_DIR " --ids 1,2,3 -c abc", 2, "glm-perplexity: error: -c expects an integer");
    expect_error("-m " BF16_DIR " --ids 1,2,3 --bogus", 2, "glm-perplexity: error: unknown argument '--bogus'");
    expect_error("-m " BF16_DIR " --ids 1,2,x", 2, "glm-perplexity: error: --ids: not a token id at byte 4");
    expect_error("-m " BF16_DIR " --ids 1,2 -f x.txt", 2, "give exactly one of --ids, --ids-file or -f");
    expect_error("-m " BF16_DIR " --ids 1", 2, "need at least 2 tokens, got 1");
    expect_error("-m " BF16_DIR " --ids 1,2,512", 2, "token id 512 (index 2) is outside the vocabulary (512)");
    expect_error("-m " BF16_DIR " --ids 1,2 --kl-divergence", 2, "--kl-divergence needs --kl-divergence-base FILE");
    expect_error("-m " BF16_DIR " --ids-file tests/data/no-such.ids", 1, "glm-perplexity: error: tests/data/no-such.ids");
    expect_error("-m " BF16_DIR " --ids-file tests/data/tiny-bf16/config.json", 2,
                 "glm-perplexity: error: --ids-file tests/data/tiny-bf16/config.json: not a token id at byte 0");
    expect_error("-m tests/data/no-model --ids 1,2,3", 1, "glm-perplexity: error: cannot load model");
    expect_error("-m " BF16_DIR " --ids 1,2,3 --logits-out /nonexistent-dir/l.f32", 1, "/nonexistent-dir/l.f32");
}

RUN_TESTS_IN_TMP("glm-test-ppl")
