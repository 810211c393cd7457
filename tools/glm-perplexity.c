/* glm-perplexity - next-token perplexity of a model over token ids or a text file,
 * in windows of -c tokens moved by --stride, like llama-perplexity; optionally the
 * logits of every position, and KL divergence between two runs (FP8 vs BF16, GPU vs CPU). */
#include "common.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f) {
    fprintf(f,
        "usage: glm-perplexity [-m DIR] (--ids 1,2,3,... | -f FILE) [options]\n"
        "\n"
        "  -m, --model DIR              model directory (default: %s)\n"
        "  --ids LIST                   token ids, comma-separated\n"
        "  -f, --file FILE              text file ('-' = stdin), encoded without special tokens\n"
        "  -c, --ctx-size N             window size in tokens (default: all ids, or 512 for -f)\n"
        "  --chunks N                   score at most N windows (default: all)\n"
        "  --stride S                   window step (default: the window size); each window scores\n"
        "                               only tokens no earlier window scored\n"
        "  --logits-out FILE            write the logits of every position, float32 [n_ids, n_vocab]\n"
        "  --kl-divergence-base FILE    save this run's log-probabilities to FILE\n"
        "  --kl-divergence              with --kl-divergence-base: compare this run against FILE\n"
        "  --device cpu|cuda            backend (default: cuda when available)\n"
        "  -t, --threads N              CPU threads (default: all)\n"
        "  -b, --batch-size N           tokens per forward pass (default 512)\n"
        "  -h, --help                   this text\n",
        tool_default_model());
}

typedef struct {
    int n_vocab, n_scored;
    int32_t *targets;     /* [n_scored] */
    float *logp;          /* [n_scored, n_vocab] */
} kld_base;

#define KLD_MAGIC "GLMKLD1"

static int kld_write(const char *path, const kld_base *k) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int32_t hdr[2] = { k->n_vocab, k->n_scored };
    int ok = fwrite(KLD_MAGIC, 1, 8, f) == 8 && fwrite(hdr, 4, 2, f) == 2 &&
             fwrite(k->targets, 4, (size_t)k->n_scored, f) == (size_t)k->n_scored &&
             fwrite(k->logp, 4, (size_t)k->n_scored * k->n_vocab, f) == (size_t)k->n_scored * k->n_vocab;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static int kld_read(const char *path, kld_base *k, char *err, size_t elen) {
    FILE *f = fopen(path, "rb");
    if (!f) { snprintf(err, elen, "%s: cannot open", path); return -1; }
    char magic[8];
    int32_t hdr[2];
    if (fread(magic, 1, 8, f) != 8 || memcmp(magic, KLD_MAGIC, 8) || fread(hdr, 4, 2, f) != 2 || hdr[0] < 1 || hdr[1] < 0) {
        fclose(f);
        snprintf(err, elen, "%s: not a glm-perplexity KL-divergence base file (bad header at byte 0)", path);
        return -1;
    }
    k->n_vocab = hdr[0];
    k->n_scored = hdr[1];
    k->targets = malloc(sizeof(int32_t) * (size_t)(k->n_scored ? k->n_scored : 1));
    k->logp = malloc(sizeof(float) * (size_t)k->n_scored * k->n_vocab + 1);
    int ok = k->targets && k->logp && fread(k->targets, 4, (size_t)k->n_scored, f) == (size_t)k->n_scored &&
             fread(k->logp, 4, (size_t)k->n_scored * k->n_vocab, f) == (size_t)k->n_scored * k->n_vocab;
    fclose(f);
    if (!ok) snprintf(err, elen, "%s: truncated (expected %d rows of %d log-probabilities)", path, k->n_scored, k->n_vocab);
    return ok ? 0 : -1;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    const char *model_dir = NULL, *ids_arg = NULL, *file = NULL, *logits_out = NULL, *kld_path = NULL;
    int n_ctx = 0, stride = 0, kld_compare = 0, n_batch = 512, max_chunks = 0;
    glm_ctx_params cp = glm_ctx_default_params();
    cp.device = tool_default_device();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return EXIT_OK; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_dir = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "--ids")) ids_arg = tool_arg(argc, argv, &i);
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
        else { fprintf(stderr, "glm-perplexity: error: unknown argument '%s' (see --help)\n", a); return EXIT_USAGE; }
    }
    if (!ids_arg == !file) { fprintf(stderr, "glm-perplexity: error: give exactly one of --ids or -f\n"); return EXIT_USAGE; }
    if (kld_compare && !kld_path) { fprintf(stderr, "glm-perplexity: error: --kl-divergence needs --kl-divergence-base FILE\n"); return EXIT_USAGE; }
    if (!model_dir) model_dir = tool_default_model();

    int32_t *ids = NULL;
    int n_ids = 0;
    if (ids_arg) {
        char err[160];
        if (tool_parse_ids(ids_arg, &ids, &n_ids, err, sizeof err)) { fprintf(stderr, "glm-perplexity: error: --ids: %s\n", err); return EXIT_USAGE; }
    } else {
        size_t len;
        char *text = tool_read_text("glm-perplexity", file, &len);
        if (!text) return EXIT_FAIL;
        glm_tokenizer *tok = NULL;
        int rc = glm_tokenizer_load_dir(model_dir, &tok);
        if (rc == GLM_OK) rc = glm_tokenize(tok, text, len, GLM_TOK_PARSE_SPECIAL, &ids, &n_ids);
        free(text);
        glm_tokenizer_free(tok);
        if (rc) { fprintf(stderr, "glm-perplexity: error: %s: %s\n", file, glm_last_error()); return EXIT_FAIL; }
        if (!n_ctx) n_ctx = 512;
    }
    if (n_ids < 2) { fprintf(stderr, "glm-perplexity: error: need at least 2 tokens, got %d\n", n_ids); return EXIT_USAGE; }
    if (!n_ctx || n_ctx > n_ids) n_ctx = n_ids;
    if (!stride || stride > n_ctx) stride = n_ctx;
    if (max_chunks) { /* keep only the tokens the first max_chunks windows cover */
        long cover = (long)(max_chunks - 1) * stride + n_ctx;
        if (cover < n_ids) n_ids = (int)cover;
    }

    glm_model *m = tool_load_model("glm-perplexity", model_dir);
    if (!m) return EXIT_FAIL;
    const int V = glm_model_hparams(m)->n_vocab;
    for (int i = 0; i < n_ids; i++)
        if (ids[i] >= V) { fprintf(stderr, "glm-perplexity: error: token id %d (index %d) is outside the vocabulary (%d)\n", ids[i], i, V); return EXIT_USAGE; }
    cp.n_ctx = n_ctx;
    cp.n_batch = n_batch < n_ctx ? n_batch : n_ctx;
    glm_ctx *c = NULL;
    if (glm_ctx_new(m, &cp, &c) != GLM_OK) { fprintf(stderr, "glm-perplexity: error: %s\n", glm_last_error()); return EXIT_FAIL; }

    FILE *lf = NULL;
    if (logits_out && !(lf = fopen(logits_out, "wb"))) { fprintf(stderr, "glm-perplexity: error: %s: cannot write\n", logits_out); return EXIT_FAIL; }
    kld_base base = {0}, cur = {0};
    if (kld_compare) {
        char err[256];
        if (kld_read(kld_path, &base, err, sizeof err)) { fprintf(stderr, "glm-perplexity: error: %s\n", err); return EXIT_FAIL; }
        if (base.n_vocab != V) { fprintf(stderr, "glm-perplexity: error: %s has vocabulary %d, the model %d\n", kld_path, base.n_vocab, V); return EXIT_FAIL; }
    } else if (kld_path) {
        cur.n_vocab = V;
        cur.targets = malloc(sizeof(int32_t) * (size_t)n_ids);
        cur.logp = malloc(sizeof(float) * (size_t)n_ids * V);
        if (!cur.targets || !cur.logp) { fprintf(stderr, "glm-perplexity: error: out of memory for %d x %d log-probabilities\n", n_ids, V); return EXIT_FAIL; }
    }

    /* windows [b, e): score targets max(b+1, prev_e) .. e-1 given the window's earlier tokens */
    double nll = 0, nll2 = 0, t0 = tool_now();
    int n_scored = 0, prev_e = 0, windows = 0;
    double kl_sum = 0, dp_sum = 0;
    int same_top = 0;
    double *kls = kld_compare ? malloc(sizeof(double) * (size_t)n_ids) : NULL;
    int8_t *want = malloc((size_t)n_ctx);
    double *lp = malloc(sizeof(double) * (size_t)V);
    for (int b = 0; prev_e < n_ids; b += stride) {
        int e = b + n_ctx < n_ids ? b + n_ctx : n_ids;
        int first = b + 1 > prev_e ? b + 1 : prev_e;
        if (e - b < 2 && first >= e) break;
        glm_ctx_seq_clear(c, 0);
        for (int i = 0; i < e - b; i++) want[i] = (b + i + 1 >= first && b + i + 1 < e) || (lf && b + i == 0);
        glm_batch batch = { e - b, ids + b, NULL, want };
        int rc = glm_ctx_decode(c, &batch);
        if (rc != GLM_OK) { fprintf(stderr, "glm-perplexity: error: %s\n", glm_last_error()); return EXIT_FAIL; }
        if (lf && b == 0) fwrite(glm_ctx_logits(c, 0), sizeof(float), (size_t)V, lf);
        for (int t = first; t < e; t++) {
            const float *l = glm_ctx_logits(c, t - 1 - b); /* logits at t-1 predict token t */
            if (lf) fwrite(l, sizeof(float), (size_t)V, lf);
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
            if (kld_compare && n_scored < base.n_scored) {
                const float *bl = base.logp + (size_t)n_scored * V;
                double kl = 0;
                int top_b = 0, top_c = 0;
                for (int v = 0; v < V; v++) {
                    lp[v] = l[v] - lse;
                    kl += exp(bl[v]) * (bl[v] - lp[v]);
                    if (bl[v] > bl[top_b]) top_b = v;
                    if (lp[v] > lp[top_c]) top_c = v;
                }
                kls[n_scored] = kl;
                kl_sum += kl;
                dp_sum += exp(lp[ids[t]]) - exp(bl[ids[t]]);
                same_top += top_b == top_c;
                if (base.targets[n_scored] != ids[t]) {
                    fprintf(stderr, "glm-perplexity: error: token %d differs from the base run's (%d vs %d): not the same input\n", t, ids[t], base.targets[n_scored]);
                    return EXIT_FAIL;
                }
            }
            n_scored++;
        }
        prev_e = e;
        windows++;
        if (isatty(2)) fprintf(stderr, "\r[%d] %d/%d tokens, ppl %.4f", windows, n_scored, n_ids - 1, exp(nll / n_scored));
    }
    if (isatty(2)) fputc('\n', stderr);
    double dt = tool_now() - t0;
    double mean = nll / n_scored, var = nll2 / n_scored - mean * mean;
    double ppl = exp(mean), ppl_err = ppl * sqrt((var > 0 ? var : 0) / (n_scored > 1 ? n_scored - 1 : 1));
    printf("PPL = %.4f +/- %.4f\n", ppl, ppl_err);
    fprintf(stderr, "glm-perplexity: %d tokens scored in %d windows of %d (stride %d), mean NLL %.6f, %.1f tok/s\n",
            n_scored, windows, n_ctx, stride, mean, (n_scored + windows) / dt);
    if (lf) { fclose(lf); fprintf(stderr, "glm-perplexity: wrote %d x %d logits to %s\n", n_scored + 1, V, logits_out); }
    if (cur.logp) {
        cur.n_scored = n_scored;
        if (kld_write(kld_path, &cur)) { fprintf(stderr, "glm-perplexity: error: %s: write failed\n", kld_path); return EXIT_FAIL; }
        fprintf(stderr, "glm-perplexity: saved log-probabilities of %d tokens to %s\n", n_scored, kld_path);
    }
    if (kld_compare) {
        if (base.n_scored != n_scored) { fprintf(stderr, "glm-perplexity: error: base has %d scored tokens, this run %d\n", base.n_scored, n_scored); return EXIT_FAIL; }
        qsort(kls, (size_t)n_scored, sizeof *kls, cmp_double);
        int q = (int)ceil(0.999 * n_scored) - 1;
        printf("Mean KLD: %.6f\n99.9%% KLD: %.6f\nMean dp: %.4f %%\nSame top token: %.2f %%\n",
               kl_sum / n_scored, kls[q < 0 ? 0 : q], 100.0 * dp_sum / n_scored, 100.0 * same_top / n_scored);
    }
    free(kls); free(want); free(lp); free(ids); free(cur.targets); free(cur.logp); free(base.targets); free(base.logp);
    glm_ctx_free(c);
    glm_model_free(m);
    return EXIT_OK;
}
