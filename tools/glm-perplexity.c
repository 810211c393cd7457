/* glm-perplexity - next-token perplexity of a model over token ids or a text file,
 * in windows of -c tokens moved by --stride, like llama-perplexity; optionally the
 * logits of every position, and KL divergence between two runs (FP8 vs BF16, GPU vs CPU). */
#include "common.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PROG "glm-perplexity"

static void usage(FILE *f) {
    fprintf(f,
        "usage: glm-perplexity [-m DIR] (--ids 1,2,3,... | --ids-file FILE | -f FILE) [options]\n"
        "\n"
        "  -m, --model DIR              model directory (default: %s)\n"
        "  --ids LIST                   token ids, comma-separated\n"
        "  --ids-file FILE              token ids from FILE ('-' = stdin), separated by commas or spaces\n"
        "  -f, --file FILE              text file ('-' = stdin), encoded without special tokens\n"
        "  -c, --ctx-size N             window size in tokens (default: all ids, or 512 for -f)\n"
        "  --chunks N                   score at most N windows (default: all)\n"
        "  --stride S                   window step (default: the window size); each window scores\n"
        "                               only tokens no earlier window scored\n"
        "  --logits-out FILE            write float32 [n_ids, n_vocab] (n_ids after --chunks): row i holds\n"
        "                               the logits at position i, from the window that scores token i+1\n"
        "                               (the logits the perplexity uses); when no window scores it (the\n"
        "                               first token of a window that does not overlap the one before, or\n"
        "                               i is the last position), from the window that ends at position i\n"
        "  --kl-divergence-base FILE    save this run's log-probabilities, -c and --stride to FILE\n"
        "  --kl-divergence              with --kl-divergence-base: compare this run against FILE\n"
        "                               (made with the same ids, -c and --stride); KLD in nats\n"
        "  --device cpu|cuda            backend (default: cuda when available)\n"
        "  -t, --threads N              CPU threads (default: all)\n"
        "  -b, --batch-size N           tokens per forward pass (default 512)\n"
        "  --kv-type bf16|fp8           CUDA KV cache type (default bf16; the CPU keeps float32)\n",
        tool_default_model());
    tool_tp_usage(f, 31);
    fprintf(f, "  -h, --help                   this text\n");
}

/* The log-probabilities of a run, saved for --kl-divergence with what made them. */
typedef struct {
    int n_vocab, n_scored, n_ctx, stride;
    int32_t *targets;     /* [n_scored] */
    float *logp;          /* [n_scored, n_vocab] */
} kld_base;

#define KLD_MAGIC "GLMKLD2"      /* 8 bytes with the NUL; then int32 n_vocab, n_scored, n_ctx, stride */
#define KLD_MAGIC_V1 "GLMKLD1"   /* the format before -c and --stride were recorded */

/* Writes k to f (opened before the run); returns 0, or -1 when a write fails. */
static int kld_write(FILE *f, const kld_base *k) {
    const int32_t hdr[4] = { k->n_vocab, k->n_scored, k->n_ctx, k->stride };
    const size_t nl = (size_t)k->n_scored * k->n_vocab;
    int ok = fwrite(KLD_MAGIC, 1, 8, f) == 8 && fwrite(hdr, 4, 4, f) == 4 &&
             fwrite(k->targets, 4, (size_t)k->n_scored, f) == (size_t)k->n_scored && fwrite(k->logp, 4, nl, f) == nl;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* Reads a base file; returns 0, or -1 with a message naming the file in err. */
static int kld_read(const char *path, kld_base *k, char *err, size_t elen) {
    FILE *f = fopen(path, "rb");
    if (!f) { snprintf(err, elen, "%s: %s", path, strerror(errno)); return -1; }
    char magic[8];
    int32_t hdr[4];
    const int got = fread(magic, 1, 8, f) == 8;
    if (got && !memcmp(magic, KLD_MAGIC_V1, 8)) {
        fclose(f);
        snprintf(err, elen, "%s: a KL-divergence base file of an older glm-perplexity that did not record -c and "
                 "--stride: make it again with --kl-divergence-base", path);
        return -1;
    }
    if (!got || memcmp(magic, KLD_MAGIC, 8) || fread(hdr, 4, 4, f) != 4 || hdr[0] < 1 || hdr[1] < 0 || hdr[2] < 2 || hdr[3] < 1) {
        fclose(f);
        snprintf(err, elen, "%s: not a glm-perplexity KL-divergence base file (bad header at byte 0)", path);
        return -1;
    }
    k->n_vocab = hdr[0]; k->n_scored = hdr[1]; k->n_ctx = hdr[2]; k->stride = hdr[3];
    const size_t nl = (size_t)k->n_scored * k->n_vocab;
    k->targets = malloc(sizeof(int32_t) * (size_t)(k->n_scored ? k->n_scored : 1));
    k->logp = malloc(sizeof(float) * nl + 1);
    int ok = k->targets && k->logp && fread(k->targets, 4, (size_t)k->n_scored, f) == (size_t)k->n_scored &&
             fread(k->logp, 4, nl, f) == nl;
    fclose(f);
    if (!ok) snprintf(err, elen, "%s: truncated (expected %d rows of %d log-probabilities)", path, k->n_scored, k->n_vocab);
    return ok ? 0 : -1;
}

/* One window [b, e) of the ids: it scores targets first..e-1 and, with --logits-out,
 * writes the logits of positions w0..w1-1. */
typedef struct { int b, e, first, w0, w1; } window;

/* Lays out the windows over n ids; returns how many (*out malloc'd), or -1 on OOM.
 * keep_last adds the one-token window that only --logits-out needs. */
static int plan_windows(int n, int n_ctx, int stride, int keep_last, window **out) {
    window *w = malloc(sizeof *w * (size_t)(n / stride + 2));
    if (!w) return -1;
    int k = 0, prev_e = 0, prev_w1 = 0;
    for (int b = 0; prev_e < n; b += stride) {
        window x = { b, b + n_ctx < n ? b + n_ctx : n, 0, 0, 0 };
        x.first = b + 1 > prev_e ? b + 1 : prev_e;
        if (x.first >= x.e && !keep_last) break;
        /* from the position before the first target, unless the window before wrote it */
        x.w0 = x.first - 1 > prev_w1 ? x.first - 1 : prev_w1;
        /* the window's last position predicts token e: write it here unless the next
         * window scores token e (it overlaps this one) */
        x.w1 = x.e == n || b + stride >= x.e ? x.e : x.e - 1;
        w[k++] = x;
        prev_e = x.e;
        prev_w1 = x.w1;
    }
    *out = w;
    return k;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    const char *model_dir = NULL, *ids_arg = NULL, *ids_file = NULL, *file = NULL, *logits_out = NULL, *kld_path = NULL;
    int n_ctx = 0, stride = 0, kld_compare = 0, n_batch = 512, max_chunks = 0;
    tool_init(PROG);
    glm_ctx_params cp = glm_ctx_default_params();
    tool_tp_opts tpo = tool_tp_default();
    cp.device = tool_default_device();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return EXIT_OK; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_dir = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "--ids")) ids_arg = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "--ids-file")) ids_file = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) file = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) n_ctx = tool_int(a, tool_arg(argc, argv, &i), 2, 1 << 24);
        else if (!strcmp(a, "--chunks")) max_chunks = tool_int(a, tool_arg(argc, argv, &i), 1, 1 << 30);
        else if (!strcmp(a, "--stride")) stride = tool_int(a, tool_arg(argc, argv, &i), 1, 1 << 24);
        else if (!strcmp(a, "--logits-out")) logits_out = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "--kl-divergence-base")) kld_path = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "--kl-divergence")) kld_compare = 1;
        else if (!strcmp(a, "--device")) cp.device = tool_device(tool_arg(argc, argv, &i));
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) cp.n_threads = tool_int(a, tool_arg(argc, argv, &i), 1, 1024);
        else if (!strcmp(a, "-b") || !strcmp(a, "--batch-size")) n_batch = tool_int(a, tool_arg(argc, argv, &i), 1, 1 << 16);
        else if (!strcmp(a, "--kv-type")) cp.kv_type = tool_kv_type(tool_arg(argc, argv, &i));
        else if (tool_tp_flag(argc, argv, &i, &tpo)) continue;
        else tool_usage_error("unknown argument '%s' (see --help)", a);
    }
    if ((ids_arg != NULL) + (ids_file != NULL) + (file != NULL) != 1) tool_usage_error("give exactly one of --ids, --ids-file or -f");
    if (kld_compare && !kld_path) tool_usage_error("--kl-divergence needs --kl-divergence-base FILE");
    const int tp_check = tool_tp_check(&tpo, cp.device);
    if (tp_check) { tool_tp_free(&tpo); return tp_check; }
    /* --dist-init: the processes of ranks other than 0 run every window and write nothing */
    const int quiet = tool_tp_quiet();
    if (quiet && !freopen("/dev/null", "w", stdout)) {
        fprintf(stderr, PROG ": error: /dev/null: cannot open\n");
        tool_tp_free(&tpo);
        return EXIT_FAIL;
    }
    if (!model_dir) model_dir = tool_default_model();

    int32_t *ids = NULL;
    int n_ids = 0;
    if (ids_arg || ids_file) {
        char err[160];
        char *text = ids_file ? tool_read_text(PROG, ids_file, NULL) : NULL;
        if (ids_file && !text) { tool_tp_free(&tpo); return EXIT_FAIL; }
        int bad = tool_parse_ids(ids_file ? text : ids_arg, &ids, &n_ids, err, sizeof err);
        free(text);
        if (bad) tool_usage_error("%s%s: %s", ids_file ? "--ids-file " : "--ids", ids_file ? ids_file : "", err);
    } else {
        size_t len;
        char *text = tool_read_text(PROG, file, &len);
        if (!text) { tool_tp_free(&tpo); return EXIT_FAIL; }
        glm_tokenizer *tok = NULL;
        int rc = glm_tokenizer_load_dir(model_dir, &tok);
        if (rc == GLM_OK) rc = glm_tokenize(tok, text, len, GLM_TOK_PARSE_SPECIAL, &ids, &n_ids);
        free(text);
        glm_tokenizer_free(tok);
        if (rc) { fprintf(stderr, PROG ": error: %s: %s\n", file, glm_last_error()); tool_tp_free(&tpo); return EXIT_FAIL; }
        if (!n_ctx) n_ctx = 512;
    }
    if (n_ids < 2) tool_usage_error("need at least 2 tokens, got %d", n_ids);
    if (!n_ctx || n_ctx > n_ids) n_ctx = n_ids;
    if (!stride || stride > n_ctx) stride = n_ctx;
    if (max_chunks) { /* keep only the tokens the first max_chunks windows cover */
        long long cover = (long long)(max_chunks - 1) * stride + n_ctx;
        if (cover < n_ids) n_ids = (int)cover;
    }
    window *win = NULL;
    const int n_win = plan_windows(n_ids, n_ctx, stride, logits_out != NULL, &win);
    if (n_win < 0) { fprintf(stderr, PROG ": error: out of memory\n"); tool_tp_free(&tpo); return EXIT_FAIL; }
    int n_score = 0; /* tokens the windows score */
    for (int w = 0; w < n_win; w++) n_score += win[w].e - win[w].first;

    /* the base run must have scored the same tokens in the same windows: checked before the run */
    kld_base base = {0}, cur = {0};
    FILE *kf = NULL;
    if (kld_compare) {
        char err[320];
        if (kld_read(kld_path, &base, err, sizeof err)) {
            fprintf(stderr, PROG ": error: %s\n", err);
            tool_tp_free(&tpo);
            return EXIT_FAIL;
        }
        const char *what = base.n_ctx != n_ctx ? "-c" : base.stride != stride ? "--stride" : NULL;
        if (what) {
            fprintf(stderr, PROG ": error: %s was made with %s %d, this run has %s %d\n", kld_path, what,
                    what[1] == 'c' ? base.n_ctx : base.stride, what, what[1] == 'c' ? n_ctx : stride);
            tool_tp_free(&tpo);
            return EXIT_FAIL;
        }
        if (base.n_scored != n_score) {
            fprintf(stderr, PROG ": error: %s scored %d tokens, this run scores %d (not the same input or --chunks)\n",
                    kld_path, base.n_scored, n_score);
            tool_tp_free(&tpo);
            return EXIT_FAIL;
        }
        for (int w = 0, j = 0; w < n_win; w++)
            for (int t = win[w].first; t < win[w].e; t++, j++)
                if (base.targets[j] != ids[t]) {
                    fprintf(stderr, PROG ": error: token %d is %d, in %s %d: not the same input\n", t, ids[t], kld_path, base.targets[j]);
                    tool_tp_free(&tpo);
                    return EXIT_FAIL;
                }
    } else if (kld_path && !quiet && !(kf = fopen(kld_path, "wb"))) {
        fprintf(stderr, PROG ": error: %s: %s\n", kld_path, strerror(errno));
        tool_tp_free(&tpo);
        return EXIT_FAIL;
    }

    glm_model *m = tool_load_model(PROG, model_dir);
    if (!m) { tool_tp_free(&tpo); return EXIT_FAIL; }
    const int V = glm_model_hparams(m)->n_vocab;
    for (int i = 0; i < n_ids; i++)
        if (ids[i] >= V) tool_usage_error("token id %d (index %d) is outside the vocabulary (%d)", ids[i], i, V);
    if (kld_compare && base.n_vocab != V) {
        fprintf(stderr, PROG ": error: %s has vocabulary %d, the model %d\n", kld_path, base.n_vocab, V);
        tool_tp_free(&tpo);
        return EXIT_FAIL;
    }
    tool_warn_ctx(PROG, n_ctx, m);
    cp.n_ctx = n_ctx;
    cp.n_batch = n_batch < n_ctx ? n_batch : n_ctx;
    int tp_rc = tool_tp_apply(&tpo, m, &cp);
    if (tp_rc) {
        tool_tp_free(&tpo);
        glm_model_free(m);
        free(ids); free(win); free(base.targets); free(base.logp);
        if (kf) fclose(kf);
        return tp_rc;
    }
    glm_ctx *c = NULL;
    if (glm_ctx_new(m, &cp, &c) != GLM_OK) {
        fprintf(stderr, PROG ": error: %s\n", glm_last_error());
        tool_tp_free(&tpo);
        glm_model_free(m);
        free(ids); free(win); free(base.targets); free(base.logp);
        if (kf) fclose(kf);
        return EXIT_FAIL;
    }

    FILE *lf = NULL;
    if (logits_out && !quiet && !(lf = fopen(logits_out, "wb"))) {
        fprintf(stderr, PROG ": error: %s: %s\n", logits_out, strerror(errno));
        return EXIT_FAIL;
    }
    if (kf) {
        cur = (kld_base){ V, n_score, n_ctx, stride, malloc(sizeof(int32_t) * (size_t)n_score),
                          malloc(sizeof(float) * (size_t)n_score * V) };
        if (!cur.targets || !cur.logp) {
            fprintf(stderr, PROG ": error: out of memory for %d x %d log-probabilities\n", n_score, V);
            return EXIT_FAIL;
        }
    }

    /* each window: score targets first..e-1 with the logits at the position before */
    double nll = 0, nll2 = 0, t0 = tool_now();
    int n_scored = 0, windows = 0, n_rows = 0;
    double kl_sum = 0, dp_sum = 0;
    int same_top = 0;
    double *kls = kld_compare ? malloc(sizeof(double) * (size_t)(n_score ? n_score : 1)) : NULL;
    int8_t *want = malloc((size_t)n_ctx);
    double *lp = malloc(sizeof(double) * (size_t)V);
    for (int w = 0; w < n_win; w++) {
        const int b = win[w].b, e = win[w].e, first = win[w].first;
        glm_ctx_seq_clear(c, 0);
        for (int i = 0; i < e - b; i++) {
            const int p = b + i;
            /* the rows every process asks for alike (--dist-init: the logits are gathered) */
            want[i] = (p + 1 >= first && p + 1 < e) || (logits_out && p >= win[w].w0 && p < win[w].w1);
        }
        glm_batch batch = { e - b, ids + b, NULL, want };
        if (glm_ctx_decode(c, &batch) != GLM_OK) { fprintf(stderr, PROG ": error: %s\n", glm_last_error()); return EXIT_FAIL; }
        for (int p = win[w].w0; lf && p < win[w].w1; p++, n_rows++)
            if (fwrite(glm_ctx_logits(c, p - b), sizeof(float), (size_t)V, lf) != (size_t)V) {
                fprintf(stderr, PROG ": error: %s: write failed\n", logits_out);
                return EXIT_FAIL;
            }
        for (int t = first; t < e; t++) {
            const float *l = glm_ctx_logits(c, t - 1 - b); /* logits at t-1 predict token t */
            double mx = l[0], sum = 0;
            for (int v = 1; v < V; v++) if (l[v] > mx) mx = l[v];
            for (int v = 0; v < V; v++) sum += exp(l[v] - mx);
            double lse = mx + log(sum);
            double x = lse - l[ids[t]];
            nll += x;
            nll2 += x * x;
            if (cur.logp) {
                cur.targets[n_scored] = ids[t];
                for (int v = 0; v < V; v++) cur.logp[(size_t)n_scored * V + v] = (float)(l[v] - lse);
            }
            if (kld_compare) { /* KL(base || this run) in nats */
                const float *bl = base.logp + (size_t)n_scored * V;
                double kl = 0;
                int top_b = 0, top_c = 0;
                for (int v = 0; v < V; v++) {
                    lp[v] = l[v] - lse;
                    kl += exp(bl[v]) * (bl[v] - lp[v]);
                    if (bl[v] > bl[top_b]) top_b = v;
                    if (lp[v] > lp[top_c]) top_c = v;
                }
                if (!(kl > 0)) kl = 0;  /* KL >= 0; below is rounding (the base holds float32): no "-0.000000" */
                kls[n_scored] = kl;
                kl_sum += kl;
                dp_sum += exp(lp[ids[t]]) - exp(bl[ids[t]]);
                same_top += top_b == top_c;
            }
            n_scored++;
        }
        if (first < e) windows++;
        if (!quiet && isatty(2) && n_scored) fprintf(stderr, "\r[%d] %d/%d tokens, ppl %.4f", windows, n_scored, n_score, exp(nll / n_scored));
    }
    if (!quiet && isatty(2)) fputc('\n', stderr);
    double dt = tool_now() - t0;
    double mean = nll / n_scored, var = nll2 / n_scored - mean * mean;
    double ppl = exp(mean), ppl_err = ppl * sqrt((var > 0 ? var : 0) / (n_scored > 1 ? n_scored - 1 : 1));
    printf("PPL = %.4f +/- %.4f\n", ppl, ppl_err);
    if (!quiet)
        fprintf(stderr, PROG ": %d tokens scored in %d windows of %d (stride %d), mean NLL %.6f, %.1f tok/s\n",
            n_scored, windows, n_ctx, stride, mean, (n_scored + windows) / dt);
    if (lf) {
        if (fclose(lf)) { fprintf(stderr, PROG ": error: %s: write failed\n", logits_out); return EXIT_FAIL; }
        fprintf(stderr, PROG ": wrote %d x %d logits to %s\n", n_rows, V, logits_out);
    }
    if (kf) {
        if (kld_write(kf, &cur)) { fprintf(stderr, PROG ": error: %s: write failed\n", kld_path); return EXIT_FAIL; }
        fprintf(stderr, PROG ": saved log-probabilities of %d tokens to %s\n", n_scored, kld_path);
    }
    if (kld_compare) {
        qsort(kls, (size_t)n_scored, sizeof *kls, cmp_double);
        int q = (int)ceil(0.999 * n_scored) - 1;
        printf("Mean KLD: %.6f\n99.9%% KLD: %.6f\nMean dp: %.4f %%\nSame top token: %.2f %%\n",
               kl_sum / n_scored, kls[q < 0 ? 0 : q], 100.0 * dp_sum / n_scored, 100.0 * same_top / n_scored);
    }
    free(kls); free(want); free(lp); free(ids); free(win); free(cur.targets); free(cur.logp); free(base.targets); free(base.logp);
    glm_ctx_free(c);
    tool_tp_free(&tpo);  /* after the context, which may point to the GPU list */
    glm_model_free(m);
    return EXIT_OK;
}
