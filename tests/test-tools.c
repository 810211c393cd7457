/* test-tools.c - the command-line tools end to end on the tiny trained model: the
 * golden perplexity against transformers, glm-run in pipes (stdin, --json, --stop,
 * seeds, --print-ids, greedy ids against transformers), Ctrl-C, chat, glm-perplexity's
 * windows and KL divergence, exit codes and the messages of usage errors. */
#include "test.h"
#include "refs.h"
#include "tool-run.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define tmp test_tmp
#define bin tool_bin()

/* Runs a shell command through tool-run.h; returns its exit status and, when out is not
 * NULL, its stdout (malloc'd, NUL-terminated); its stderr stays for run_err(). */
static int run(const char *cmd, char **out) {
    tool_result r;
    int st = run_tool(&r, "%s", cmd);
    if (out) { *out = r.out; r.out = NULL; }
    tool_result_free(&r);
    return st;
}

/* The stderr of the last run() (malloc'd, NUL-terminated; "" when there is none). */
static char *run_err(void) {
    char path[300];
    snprintf(path, sizeof path, "%s/run.err", tmp);
    char *e = slurp(path, NULL);
    return e ? e : calloc(1, 1);
}

/* Seconds on a monotonic clock. */
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
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
    /* measured 152.1564 (printed to 4 decimals) against 152.156334: 4.3e-7 relative,
     * of which the printing's rounding may be up to 3.3e-7; bound 2e-6 */
    CHECK_MSG(fabs(a - ref) / ref < 2e-6, "PPL %.6f (text), transformers %.6f", a, ref);
    CHECK_MSG(fabs(b - ref) / ref < 2e-6, "PPL %.6f (ids), transformers %.6f", b, ref);
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
    /* zero, never "-0.000000" (a sum of p (log p_base - log p) rounds either way) */
    CHECK_MSG(strstr(out, "Mean KLD: 0.000000\n99.9% KLD: 0.000000\n") != NULL, "%s", out);
    CHECK(strstr(out, "Same top token: 100.00 %") != NULL);
    free(out);
    /* a base whose top log-probabilities sit two floats lower (rows summing to just under 1)
     * gives a sum just below zero on every row: still printed as zero */
    {
        char path[300];
        size_t len = 0;
        snprintf(path, sizeof path, "%s/base.kld", tmp);
        char *b = slurp(path, &len);
        int32_t hdr[4] = { 0 };
        if (b && len >= 24) memcpy(hdr, b + 8, sizeof hdr);
        const size_t V = (size_t)hdr[0], rows = (size_t)hdr[1], at = 24 + 4 * rows;
        CHECK(b && V > 1 && rows > 0 && len == at + 4 * rows * V);
        if (b && V > 1 && rows > 0 && len == at + 4 * rows * V) {
            for (size_t r = 0; r < rows; r++) {
                float *lp = (float *)(b + at) + r * V;  /* at is a multiple of 4; malloc aligns b */
                size_t top = 0;
                for (size_t v = 1; v < V; v++) if (lp[v] > lp[top]) top = v;
                lp[top] = nextafterf(nextafterf(lp[top], -INFINITY), -INFINITY);
            }
            snprintf(path, sizeof path, "%s/low.kld", tmp);
            FILE *f = fopen(path, "wb");
            CHECK(f && fwrite(b, 1, len, f) == len && fclose(f) == 0);
            snprintf(cmd, sizeof cmd, "%s/glm-perplexity -f tests/data/tiny-ppl/heldout.txt -c 128 --chunks 2 --device cpu -t 1 --kl-divergence-base %s/low.kld --kl-divergence", bin, tmp);
            CHECK(run(cmd, &out) == 0);
            CHECK_MSG(strstr(out, "Mean KLD: 0.000000\n99.9% KLD: 0.000000\n") != NULL, "%s", out);
            free(out);
        }
        free(b);
    }
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
    /* the piped prompt loses its trailing newline: the same tokens, the same continuation as -p */
    snprintf(cmd, sizeof cmd, "%s/glm-run -p 'The jury said' -n 12 --temp 0 --device cpu", bin);
    CHECK(run(cmd, &b) == 0);
    CHECK_MSG(strcmp(a, b) == 0, "stdin '%s' vs -p '%s'", a, b);
    CHECK(strstr(j, "\"finish_reason\": \"length\"") != NULL);
    CHECK(strstr(j, "\"gen_tokens\": 12") != NULL);
    char *t = strstr(j, "\"text\": \"");
    CHECK(t && strncmp(t + 9, b, strlen(b)) == 0 && t[9 + strlen(b)] == '"');
    free(a); free(b); free(j);
    /* -f keeps the prompt tokens -p gives: the same prompt_tokens in --json */
    snprintf(cmd, sizeof cmd, "printf 'The jury said\\n' > %s/p.txt && %s/glm-run -f %s/p.txt -n 1 --temp 0 --device cpu --json", tmp, bin, tmp);
    CHECK(run(cmd, &a) == 0);
    snprintf(cmd, sizeof cmd, "%s/glm-run -p 'The jury said' -n 1 --temp 0 --device cpu --json", bin);
    CHECK(run(cmd, &b) == 0);
    const char *pa = strstr(a, "\"prompt_tokens\": "), *pb = strstr(b, "\"prompt_tokens\": ");
    CHECK(pa && pb && atoi(pa + 17) == atoi(pb + 17) && atoi(pb + 17) > 2);
    free(a); free(b);
}

/* A stop string spread over several tokens: the streamed text ends right before it, none
 * of it printed while it was still only a possible start. */
TEST(run_stop_across_tokens) {
    char cmd[2048], *a, *b;
    snprintf(cmd, sizeof cmd, "%s/glm-run -p 'The jury said' -n 12 --temp 0 --device cpu", bin);
    CHECK(run(cmd, &a) == 0);
    /* the stop: two words from after the third space (" that the jury had not ...": "had not") */
    const char *w3 = a;
    for (int k = 0; k < 3 && w3; k++) w3 = strchr(w3 + 1, ' ');
    const char *e4 = w3 ? strchr(w3 + 1, ' ') : NULL;
    e4 = e4 ? strchr(e4 + 1, ' ') : NULL;
    CHECK(w3 && e4);
    if (!w3 || !e4) { free(a); return; }
    char stop[64] = {0};
    snprintf(stop, sizeof stop, "%.*s", (int)(e4 - w3 - 1), w3 + 1);
    snprintf(cmd, sizeof cmd, "%s/glm-run -p 'The jury said' -n 12 --temp 0 --device cpu --stop '%s'", bin, stop);
    CHECK(run(cmd, &b) == 0);
    size_t before = (size_t)(w3 + 1 - a);
    CHECK_MSG(strlen(b) == before && strncmp(a, b, before) == 0, "stop '%s': '%s' from '%s'", stop, b, a);
    free(a); free(b);
}

/* glm-run's greedy ids equal transformers' for each tiny checkpoint (tests/data/<dir>/ref.bin). */
TEST(run_greedy_ids_match_transformers) {
    const char *dirs[] = { "tests/data/tiny-bf16", "tests/data/tiny-fp8ch", "tests/data/tiny-fp8blk" };
    for (int d = 0; d < 3; d++) {
        ref_data ref;
        CHECK(ref_load(dirs[d], &ref) == 0);
        if (test_failed_now_) return;
        char ids[4096], want[4096], cmd[8192], *out;
        size_t o = 0, w = 0;
        for (int i = 0; i < ref.n_prompt; i++) o += snprintf(ids + o, sizeof ids - o, "%s%d", i ? "," : "", ref.prompt[i]);
        for (int i = 0; i < ref.n_gen; i++) w += snprintf(want + w, sizeof want - w, "%s%d", i ? "," : "", ref.gen[i]);
        snprintf(cmd, sizeof cmd, "%s/glm-run -m %s --prompt-ids %s --print-ids -n %d --temp 0 --ignore-eos --device cpu",
                 bin, dirs[d], ids, ref.n_gen);
        CHECK(run(cmd, &out) == 0);
        CHECK_MSG(strncmp(out, want, w) == 0 && out[w] == '\n', "%s: got %s want %s", dirs[d], out, want);
        free(out);
        ref_free(&ref);
    }
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
    /* --stop ends the text right before the first occurrence of a string the unstopped run
     * contains: streamed and in --json, exactly the text before it */
    char stop[8] = {0};
    const char *sp = strchr(a + 1, ' ');
    if (sp && strlen(sp) > 4) memcpy(stop, sp, 4);
    CHECK(stop[0] != 0);
    size_t before = strstr(a, stop) - a;
    snprintf(cmd, sizeof cmd, "%s/glm-run -p 'The jury said' -n 24 -s 7 --device cpu --stop '%s'", bin, stop);
    CHECK(run(cmd, &b) == 0);
    CHECK_MSG(strlen(b) == before && strncmp(a, b, before) == 0, "stop '%s': '%s' from '%s'", stop, b, a);
    free(b);
    snprintf(cmd, sizeof cmd, "%s/glm-run -p 'The jury said' -n 24 -s 7 --device cpu --json --stop '%s'", bin, stop);
    CHECK(run(cmd, &b) == 0);
    CHECK(strstr(b, "\"finish_reason\": \"stop\"") != NULL);
    char *t = strstr(b, "\"text\": \"");
    CHECK(t && strncmp(t + 9, a, before) == 0 && t[9 + before] == '"');
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

/* A 2017-token prompt for glm-tiny (2048 context): a prefill of a few seconds on the CPU. */
static const char *long_prompt(void) {
    static char path[300];
    snprintf(path, sizeof path, "%s/long.txt", tmp);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "head -c 7000 tests/data/tiny-ppl/heldout.txt > %s", path);
    CHECK(system(cmd) == 0);
    return path;
}

/* Starts glm-run (args: a NULL-terminated list after the program) with stdout on /dev/null,
 * stderr on a pipe (*err_fd) and stdin on a pipe (*in_fd) or, with in_fd NULL, /dev/null;
 * returns its pid. */
static pid_t spawn_run(const char *const *args, int *err_fd, int *in_fd) {
    char prog[512];
    snprintf(prog, sizeof prog, "%s/glm-run", bin);
    const char *argv[32] = { prog };
    for (int i = 0; args[i] && i < 30; i++) argv[i + 1] = args[i];
    int fds[2], ins[2] = { -1, -1 };
    if (pipe(fds) || (in_fd && pipe(ins))) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(in_fd ? ins[0] : null, 0);
        dup2(null, 1);
        dup2(fds[1], 2);
        close(fds[0]);
        if (in_fd) close(ins[1]);
        signal(SIGINT, SIG_DFL); /* not ignored, even when the tests run as a background job */
        execv(prog, (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    *err_fd = fds[0];
    if (in_fd) { close(ins[0]); *in_fd = ins[1]; }
    return pid;
}

/* Reads fd until its text contains needle or timeout_s passes; returns 1 when seen. */
static int wait_for_text(int fd, const char *needle, double timeout_s) {
    char buf[8192];
    size_t n = 0;
    double end = now_s() + timeout_s;
    while (now_s() < end) {
        struct pollfd p = { fd, POLLIN, 0 };
        if (poll(&p, 1, 50) <= 0) continue;
        ssize_t r = read(fd, buf + n, sizeof buf - 1 - n);
        if (r <= 0) return 0;
        n += (size_t)r;
        buf[n] = 0;
        if (strstr(buf, needle)) return 1;
        if (n > sizeof buf / 2) { memmove(buf, buf + n - 256, 256); n = 256; }
    }
    return 0;
}

/* Waits up to timeout_s for pid; returns its exit status (128 + signal when killed by one),
 * or -1 after killing it on timeout. */
static int wait_exit(pid_t pid, double timeout_s) {
    double end = now_s() + timeout_s;
    int st;
    while (now_s() < end) {
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -1;
}

/* Runs glm-run on the long prompt with -b batch, sends n_sig SIGINTs (the first settle_us
 * after it has loaded, the next 100 ms apart) and returns its exit status; *dt: seconds
 * from the last SIGINT to the exit. */
static int sigint_long_prompt(const char *batch, useconds_t settle_us, int n_sig, double *dt) {
    const char *args[] = { "-f", long_prompt(), "-n", "8", "--temp", "0", "--device", "cpu", "-b", batch, NULL };
    int err;
    *dt = 0;
    pid_t pid = spawn_run(args, &err, NULL);
    CHECK(pid > 0);
    if (pid <= 0) return -1;
    CHECK(wait_for_text(err, "loaded", 20));
    usleep(settle_us);
    for (int i = 0; i < n_sig; i++) {
        if (i) usleep(100000);
        kill(pid, SIGINT);
    }
    double t0 = now_s();
    int st = wait_exit(pid, 20);
    *dt = now_s() - t0;
    close(err);
    return st;
}

/* Ctrl-C during the prompt's prefill stops the run within one batch, with status 130. */
TEST(run_sigint_during_prefill) {
    double dt;
    int st = sigint_long_prompt("32", 200000, 1, &dt);
    fprintf(stderr, "  exit %d, %.3f s after SIGINT\n", st, dt);
    CHECK(st == 130);
    CHECK(dt < 1.5);
}

/* A second Ctrl-C exits at once, even in the middle of one long forward pass. */
TEST(run_sigint_twice_exits_at_once) {
    double dt;
    int st = sigint_long_prompt("2048", 100000, 2, &dt);
    fprintf(stderr, "  exit %d, %.3f s after the second SIGINT\n", st, dt);
    CHECK(st == 130);
    CHECK(dt < 0.5);
}

/* In a chat, Ctrl-C stops the reply and the chat goes on; at the prompt it ends the chat
 * with status 130. */
TEST(run_chat_sigint) {
    const char *args[] = { "--chat", "-n", "-1", "--ignore-eos", "-s", "1", "--device", "cpu", NULL };
    int err, in;
    pid_t pid = spawn_run(args, &err, &in);
    CHECK(pid > 0);
    CHECK(wait_for_text(err, "loaded", 20));
    const char *msg[] = { "Tell me about the jury.\n", "And the court?\n" };
    for (int i = 0; i < 2; i++) { /* the second reply runs as long as the first: the stop was forgotten */
        CHECK(write(in, msg[i], strlen(msg[i])) == (ssize_t)strlen(msg[i]));
        usleep(300000); /* the reply runs to the end of the context: seconds */
        kill(pid, SIGINT);
        CHECK(wait_for_text(err, "[reply stopped]", 10));
        usleep(100000);
        CHECK(waitpid(pid, NULL, WNOHANG) == 0); /* still there, waiting for the next message */
    }
    double t0 = now_s();
    kill(pid, SIGINT);
    int st = wait_exit(pid, 10);
    fprintf(stderr, "  exit %d, %.3f s after SIGINT at the prompt\n", st, now_s() - t0);
    CHECK(st == 130);
    close(in);
    close(err);
}

/* The number after the last "seed " in text, or -1. */
static long long seed_in(const char *text) {
    const char *p = NULL;
    for (const char *q = strstr(text, "seed "); q; q = strstr(q + 1, "seed ")) p = q;
    return p ? atoll(p + 5) : -1;
}

/* Without -s, runs started together draw different seeds; the seed is printed in the timing
 * summary and in --json, and -s with it gives the same text again. */
TEST(run_seed_random_per_run) {
    char cmd[2048], *out;
    snprintf(cmd, sizeof cmd, "%s/glm-run -p 'The jury said' -n 24 --device cpu -t 1 >%s/o1 2>%s/e1 & "
             "%s/glm-run -p 'The jury said' -n 24 --device cpu -t 1 >%s/o2 2>%s/e2; wait", bin, tmp, tmp, bin, tmp, tmp);
    CHECK(run(cmd, NULL) == 0);
    char path[300];
    snprintf(path, sizeof path, "%s/o1", tmp); char *o1 = slurp(path, NULL);
    snprintf(path, sizeof path, "%s/o2", tmp); char *o2 = slurp(path, NULL);
    snprintf(path, sizeof path, "%s/e1", tmp); char *e1 = slurp(path, NULL);
    snprintf(path, sizeof path, "%s/e2", tmp); char *e2 = slurp(path, NULL);
    CHECK(o1 && o2 && e1 && e2);
    if (!o1 || !o2 || !e1 || !e2) { free(o1); free(o2); free(e1); free(e2); return; }
    long long s1 = seed_in(e1), s2 = seed_in(e2);
    fprintf(stderr, "  seeds %lld and %lld\n", s1, s2);
    CHECK(s1 >= 0 && s2 >= 0 && s1 != s2);
    CHECK(strcmp(o1, o2) != 0);
    const char *summary = strstr(e1, "finish: ");
    CHECK(summary && seed_in(summary) == s1);
    snprintf(cmd, sizeof cmd, "%s/glm-run -p 'The jury said' -n 24 --device cpu -s %lld", bin, s1);
    CHECK(run(cmd, &out) == 0);
    CHECK(strcmp(out, o1) == 0);
    free(out);
    snprintf(cmd, sizeof cmd, "%s/glm-run -p 'The jury said' -n 2 --device cpu --json", bin);
    CHECK(run(cmd, &out) == 0);
    const char *js = strstr(out, "\"seed\": ");
    CHECK(js && atoll(js + 8) >= 0);
    free(out);
    free(o1); free(o2); free(e1); free(e2);
}

/* -n far past the context is capped to what the context leaves, with a message, and
 * reserves nothing by it (it runs under a 2 GB address-space limit). */
TEST(run_n_capped_to_context) {
    char cmd[2048], *out;
    const char *limit = "ulimit -v 2000000; ";
#if defined(__SANITIZE_ADDRESS__)
    limit = ""; /* the sanitizer's shadow memory needs more address space */
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
    limit = "";
#endif
#endif
    snprintf(cmd, sizeof cmd, "%s%s/glm-run -p 'The jury said' -c 32 -n 1000000000 --temp 0 --ignore-eos --device cpu -t 2 --json",
             limit, bin);
    CHECK(run(cmd, &out) == 0);
    char *err = run_err();
    CHECK_MSG(strstr(err, "glm-run: -n 1000000000 is more than the context leaves") != NULL, "%s", err);
    const char *p = strstr(out, "\"prompt_tokens\": "), *g = strstr(out, "\"gen_tokens\": ");
    CHECK(p && g && atoi(p + 17) + atoi(g + 14) == 32);
    CHECK(strstr(out, "\"finish_reason\": \"length\"") != NULL);
    free(out); free(err);
}

/* Every usage error exits 2 with a message naming the tool and the flag; nothing leaks on the
 * way out (the sanitizer build fails the exit status otherwise). */
TEST(run_usage_errors_name_flag_and_tool) {
    static const struct { const char *args, *needle; } cases[] = {
        { "-p x --top-p 0", "--top-p" },          { "-p x --top-p 1.5", "--top-p" },
        { "-p x --min-p 1", "--min-p" },          { "-p x --min-p -0.1", "--min-p" },
        { "-p x --repeat-penalty 0", "--repeat-penalty" }, { "-p x --repeat-penalty -1", "--repeat-penalty" },
        { "-p x --kv-frac 0", "--kv-frac" },      { "-p x --kv-frac 1.5", "--kv-frac" },
        { "-p x --stop ''", "--stop" },           { "-p x -n 12abc", "-n" },
        { "-p x -n ''", "-n" },                   { "-p x -n 99999999999999999999", "-n" },
        { "-p x --temp nan", "--temp" },          { "-p x --temp 1e99", "--temp" },
        { "-p x --temp -1", "--temp" },           { "-p x --top-k 3x", "--top-k" },
        { "-p x -s -1", "-s" },
        { "-p x --presence-penalty inf", "--presence-penalty" },
        { "-p x -c", "-c" },                      { "-p x --device tpu", "--device" },
        { "-p x --kv-type q4", "--kv-type" },     { "-p x --bogus", "--bogus" },
        { "--prompt-ids 1,2,999999 --print-ids", "--prompt-ids" },
        { "--prompt-ids 1,x", "--prompt-ids" },
        { "--chat --json", "--json" },            { "--chat --print-ids", "--print-ids" },
        { "--chat -p x", "--chat" },              { "-p x -f y", "-p" },
        { "-p ''", "--allow-empty" },             { "-f /dev/null", "--allow-empty" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char cmd[1024];
        snprintf(cmd, sizeof cmd, "%s/glm-run --device cpu %s </dev/null", bin, cases[i].args);
        int rc = run(cmd, NULL);
        char *err = run_err();
        CHECK_MSG(rc == 2 && strstr(err, "glm-run: error: ") && strstr(err, cases[i].needle),
                  "glm-run %s: exit %d, stderr '%s'", cases[i].args, rc, err);
        free(err);
    }
    /* a failure at run time is 1, naming what failed */
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s/glm-run -m %s/no-such-model -p x --device cpu", bin, tmp);
    CHECK(run(cmd, NULL) == 1);
    char *err = run_err();
    CHECK(strstr(err, "glm-run: error: ") && strstr(err, "no-such-model"));
    free(err);
    /* an empty prompt is fine when asked for */
    snprintf(cmd, sizeof cmd, "%s/glm-run -p '' --allow-empty -n 2 --device cpu", bin);
    CHECK(run(cmd, NULL) == 0);
}

/* -c past the trained context is used, with the common warning; the default is the trained
 * context (2048 for glm-tiny). */
TEST(run_context_default_and_warning) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s/glm-run -p 'The jury said' -c 4096 -n 1 --device cpu", bin);
    CHECK(run(cmd, NULL) == 0);
    char *err = run_err();
    CHECK_MSG(strstr(err, "glm-run: warning: context size 4096 is past the model's trained context (2048 tokens)") &&
              strstr(err, "context 4096,"), "%s", err);
    free(err);
    snprintf(cmd, sizeof cmd, "%s/glm-run -p 'The jury said' -n 1 --device cpu", bin);
    CHECK(run(cmd, NULL) == 0);
    err = run_err();
    CHECK_MSG(strstr(err, "context 2048,") && !strstr(err, "warning"), "%s", err);
    free(err);
    char *out;
    snprintf(cmd, sizeof cmd, "%s/glm-run --help", bin);
    CHECK(run(cmd, &out) == 0);
    CHECK(strstr(out, "4096") == NULL && strstr(out, "trained context") != NULL);
    free(out);
}

/* A chat that outgrows the context drops its oldest turns (keeping the system message)
 * and answers every message. */
TEST(run_chat_drops_oldest_turns) {
    char cmd[2048], *out;
    snprintf(cmd, sizeof cmd, "printf 'Tell me about the jury.\\nAnd the court?\\nWhat did the judge say?\\n"
             "Who was there?\\nWhat happened next?\\n' | %s/glm-run --chat -c 96 -n 16 --ignore-eos -s 3 --device cpu "
             "--no-think -sys 'Be brief.'", bin);
    int rc = run(cmd, &out);
    char *err = run_err();
    CHECK_MSG(rc == 0, "exit %d: %s", rc, err);
    CHECK_MSG(strstr(err, "dropped the oldest turn") != NULL, "%s", err);
    CHECK(strstr(err, "error") == NULL);
    free(out); free(err);
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
