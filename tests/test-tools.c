/* test-tools.c - the command-line tools end to end on the tiny trained model: the
 * golden perplexity against transformers, glm-run in pipes (stdin, --json, --stop,
 * seeds, --print-ids), glm-perplexity's windows and KL divergence, exit codes. */
#include "test.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define tmp test_tmp
static const char *bin_dir(void) { return getenv("GLM_BIN") ? getenv("GLM_BIN") : "build/bin"; }
#define bin bin_dir()

/* Runs a shell command; returns its exit status and stdout (malloc'd, NUL-terminated). */
static int run(const char *cmd, char **out) {
    char full[4096];
    snprintf(full, sizeof full, "cd . && %s 2>%s/err.txt", cmd, tmp);
    FILE *p = popen(full, "r");
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t r;
    while ((r = fread(buf + n, 1, cap - n - 1, p)) > 0) {
        n += r;
        if (cap - n < 2) buf = realloc(buf, cap *= 2);
    }
    buf[n] = 0;
    int st = pclose(p);
    if (out) *out = buf; else free(buf);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static double read_ref_ppl(void) {
    FILE *f = fopen("tests/data/tiny-ppl/ref.json", "r");
    char buf[512] = {0};
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    char *p = strstr(buf, "\"ppl\":");
    return p ? atof(p + 6) : -1;
}

/* Runs glm-perplexity with args, checks that it succeeds, and returns the PPL it prints
 * (-1 when it prints none). */
static double perplexity(const char *args) {
    char cmd[2048], *out;
    snprintf(cmd, sizeof cmd, "%s/glm-perplexity %s", bin, args);
    int rc = run(cmd, &out);
    CHECK_MSG(rc == 0, "%s: exit status %d", cmd, rc);
    const char *p = strstr(out, "PPL = ");
    double ppl = p ? atof(p + 6) : -1;
    free(out);
    return ppl;
}

TEST(golden_perplexity_text_and_ids) {
    double ref = read_ref_ppl();
    CHECK(ref > 1);
    double a = perplexity("-m models/glm-tiny -f tests/data/tiny-ppl/heldout.txt -c 256 --chunks 16 --device cpu");
    double b = perplexity("-m models/glm-tiny --ids \"$(cat tests/data/tiny-ppl/heldout.ids)\" -c 256 --device cpu");
    fprintf(stderr, "  glm.c PPL %.6f (text), %.6f (ids); transformers %.6f\n", a, b, ref);
    CHECK(fabs(a - ref) / ref < 1e-3);
    CHECK(fabs(b - ref) / ref < 1e-3);
}

TEST(perplexity_stride_and_kld) {
    char cmd[2048], *out;
    /* overlapping windows score each token once, with more context: lower or equal PPL */
    double plain = perplexity("-f tests/data/tiny-ppl/heldout.txt -c 128 --chunks 6 --device cpu");
    double strided = perplexity("-f tests/data/tiny-ppl/heldout.txt -c 128 --stride 64 --chunks 11 --device cpu");
    fprintf(stderr, "  c=128: %.4f, c=128 stride 64: %.4f\n", plain, strided);
    CHECK(plain > 1 && strided > 1 && strided < plain);
    /* KL divergence of a run against itself is zero, same top token 100% */
    snprintf(cmd, sizeof cmd, "%s/glm-perplexity -f tests/data/tiny-ppl/heldout.txt -c 128 --chunks 2 --device cpu --kl-divergence-base %s/base.kld", bin, tmp);
    CHECK(run(cmd, NULL) == 0);
    snprintf(cmd, sizeof cmd, "%s/glm-perplexity -f tests/data/tiny-ppl/heldout.txt -c 128 --chunks 2 --device cpu -t 1 --kl-divergence-base %s/base.kld --kl-divergence", bin, tmp);
    CHECK(run(cmd, &out) == 0);
    CHECK(strstr(out, "Mean KLD: 0.000000") != NULL);
    CHECK(strstr(out, "Same top token: 100.00 %") != NULL);
    free(out);
    /* against another model (a different input length) it refuses */
    snprintf(cmd, sizeof cmd, "%s/glm-perplexity -f tests/data/tiny-ppl/heldout.txt -c 128 --chunks 1 --device cpu --kl-divergence-base %s/base.kld --kl-divergence", bin, tmp);
    CHECK(run(cmd, NULL) == 1);
    /* logits out: [n_ids, n_vocab] float32 */
    snprintf(cmd, sizeof cmd, "%s/glm-perplexity --ids 1,2,3,4,5 --device cpu --logits-out %s/l.f32 >/dev/null && stat -c %%s %s/l.f32", bin, tmp, tmp);
    CHECK(run(cmd, &out) == 0);
    CHECK(atol(out) == 5L * 8192 * 4);
    free(out);
}

TEST(run_greedy_pipe_and_json) {
    char cmd[2048], *a, *b, *j;
    snprintf(cmd, sizeof cmd, "echo 'The jury said' | %s/glm-run -n 12 --temp 0 --device cpu", bin);
    CHECK(run(cmd, &a) == 0);
    snprintf(cmd, sizeof cmd, "%s/glm-run -p 'The jury said' -n 12 --temp 0 --device cpu --json", bin);
    CHECK(run(cmd, &j) == 0);
    fprintf(stderr, "  greedy: '%s'\n", a);
    CHECK(strlen(a) > 20);
    /* the JSON text is the same continuation; the piped prompt ends with a newline, so compare -p */
    snprintf(cmd, sizeof cmd, "%s/glm-run -p 'The jury said' -n 12 --temp 0 --device cpu", bin);
    CHECK(run(cmd, &b) == 0);
    CHECK(strstr(j, "\"finish_reason\": \"length\"") != NULL);
    CHECK(strstr(j, "\"gen_tokens\": 12") != NULL);
    char *t = strstr(j, "\"text\": \"");
    CHECK(t && strncmp(t + 9, b, 10) == 0);
    free(a); free(b); free(j);
}

TEST(run_seed_stop_and_ids) {
    char cmd[2048], *a, *b, *c;
    snprintf(cmd, sizeof cmd, "%s/glm-run -p 'The jury said' -n 24 -s 7 --device cpu", bin);
    CHECK(run(cmd, &a) == 0);
    CHECK(run(cmd, &b) == 0);
    CHECK(strcmp(a, b) == 0);
    snprintf(cmd, sizeof cmd, "%s/glm-run -p 'The jury said' -n 24 -s 8 --device cpu", bin);
    CHECK(run(cmd, &c) == 0);
    CHECK(strcmp(a, c) != 0);
    free(b); free(c);
    /* --stop ends at the first occurrence of a string the unstopped run contains */
    char stop[8] = {0};
    const char *sp = strchr(a + 1, ' ');
    if (sp && strlen(sp) > 3) memcpy(stop, sp, 3);
    snprintf(cmd, sizeof cmd, "%s/glm-run -p 'The jury said' -n 24 -s 7 --device cpu --json --stop '%s'", bin, stop);
    CHECK(run(cmd, &b) == 0);
    CHECK(strstr(b, "\"finish_reason\": \"stop\"") != NULL);
    free(a); free(b);
    /* ids in, ids out, no tokenizer needed */
    snprintf(cmd, sizeof cmd, "%s/glm-run -m tests/data/tiny-bf16 --prompt-ids 458,508,496 --print-ids -n 5 --temp 0 --device cpu", bin);
    CHECK(run(cmd, &a) == 0);
    int commas = 0;
    for (char *p = a; *p; p++) commas += *p == ',';
    CHECK(commas == 4);
    free(a);
}

TEST(run_chat_from_a_pipe) {
    char cmd[2048], *out;
    snprintf(cmd, sizeof cmd, "printf 'Tell me about the jury.\\nAnd the court?\\n/exit\\nnot read\\n' | "
             "%s/glm-run --chat -n 12 -s 3 --device cpu --no-think -sys 'Be brief.'", bin);
    CHECK(run(cmd, &out) == 0);
    CHECK(strlen(out) > 20);
    free(out);
    /* /exit first: nothing generated */
    snprintf(cmd, sizeof cmd, "printf '/exit\\nHello\\n' | %s/glm-run --chat -n 12 --device cpu", bin);
    CHECK(run(cmd, &out) == 0);
    CHECK(out[0] == 0);
    free(out);
}

TEST(help_everywhere) {
    const char *tools[] = { "glm-run", "glm-bench", "glm-perplexity", "glm-tokenize", "glm-convert" };
    for (int i = 0; i < 5; i++) {
        char cmd[512], *out;
        snprintf(cmd, sizeof cmd, "%s/%s --help", bin, tools[i]);
        CHECK_MSG(run(cmd, &out) == 0 && strstr(out, "usage") != NULL, "%s --help", tools[i]);
        free(out);
    }
}

RUN_TESTS_IN_TMP("glm-tools")
