/* glm-bench - prefill and decode throughput, like llama-bench: a checkpoint (-m) or a
 * synthetic GLM-4.7 slice whose random weights are made on the GPU (--synthetic), on
 * the CPU or CUDA backend. Each test is repeated -r times and reported as mean ± stddev
 * tokens per second. On CUDA the same run measures the GPU's copy bandwidth and its
 * FP8 GEMM rate and prints, for every test, the floor those allow and the fraction of
 * it achieved: decode moves the weights a step touches (the routed experts expected
 * to be hit) plus the KV cache it reads; prefill does the FLOPs of the batch. */
#include "common.h"

#ifdef GLM_CUDA
#include "../ggml-free-kernels/kernels.h"
#endif

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PROG "glm-bench"
#define SPEC_PROMPT 16   /* prompt tokens before a --draft decode test */

static void usage(FILE *f) {
    fprintf(f,
        "usage: glm-bench [-m DIR | --synthetic NAME [--layers L] [--fmt F]] [options]\n"
        "\n"
        "  -m, --model DIR          checkpoint directory (default: %s)\n"
        "  --synthetic NAME         random-weight model from a preset (glm-4.7, tiny); on CUDA\n"
        "                           the weights are generated on the GPU, nothing is loaded\n"
        "  --layers L               layers of the synthetic model (default: the preset's)\n"
        "  --fmt bf16|fp8ch|fp8blk  synthetic weight format (default fp8ch)\n"
        "  -p, --n-prompt LIST      prefill tests, tokens (default 512)\n"
        "  -n, --n-gen LIST         decode tests, steps (default 128)\n"
        "  -b, --batch LIST         sequences decoding together (default 1)\n"
        "  -r, --repetitions N      repetitions of each test (default 3)\n"
        "  -o, --output md|json|csv (default md)\n"
        "  --device cpu|cuda        backend (default: cuda when usable, else cpu)\n"
        "  -t, --threads N          CPU threads (default: all cores)\n"
        "  --kv-type bf16|fp8       CUDA KV cache type (default bf16)\n"
        "  --no-probe               skip the bandwidth and FP8 GEMM measurements\n"
        "  --profile                CUDA: GPU time per op after each test on stderr (graphs off)\n"
        "serving throughput (the scheduler glm-server runs; replaces -p/-n/-b):\n"
        "  --serve                  submit --requests requests at once, -np decoding together\n"
        "  -np, --parallel N        requests decoding together (default 8)\n"
        "  --requests R             requests in all (default: -np)\n"
        "  --in L, --out M          prompt and output tokens of each request (default 512, 128)\n"
        "  --in-dist LO:HI          prompt lengths drawn uniformly from [LO, HI]\n"
        "  --out-dist LO:HI         output lengths drawn uniformly from [LO, HI]\n"
        "  --batch-tokens N         tokens a step feeds at most (default 512)\n"
        "  --kv-pages N             KV pages of 16 tokens (default: every request at full length)\n"
        "  --shared-prefix S        S prompt tokens common to all requests (the prefix cache)\n"
        "  --no-prefix-cache        do not share prompt pages\n",
        tool_default_model());
    tool_tp_usage(f, 27);
    tool_spec_usage(f, 27);
    fprintf(f, "                           with --draft, each -n test runs once more at batch 1 as\n"
               "                           tg<N> d<draft>: speculative decoding after a 16-token prompt,\n"
               "                           with the acceptance rate (a synthetic model's random MTP layer\n"
               "                           accepts next to nothing)\n");
    fprintf(f, "  -h, --help               this text\n");
}

typedef struct {
    char name[32];
    int n_tok;          /* tokens processed per repetition */
    double mean, sd;    /* tokens per second */
    double ms_step;     /* decode: milliseconds per step */
    double floor_tps;   /* tokens per second the floor allows, 0 if unknown */
    double floor_detail;/* decode: bytes per step; prefill: FLOPs */
    double kv_peak;     /* the largest fraction of the KV pages the test held */
    int draft;          /* speculative decoding test: tokens drafted a step, else 0 */
    double acceptance;  /* of the drafted tokens, the fraction accepted */
    double mean_accepted; /* drafted tokens accepted a verify step */
} result;

static void stats(const double *v, int n, double *mean, double *sd) {
    double s = 0, q = 0;
    for (int i = 0; i < n; i++) s += v[i];
    *mean = s / n;
    for (int i = 0; i < n; i++) q += (v[i] - *mean) * (v[i] - *mean);
    *sd = n > 1 ? sqrt(q / (n - 1)) : 0;
}

/* The CUDA backend's time per op for the test just run (warm-up included). */
static void print_profile(int on, const char *test) {
#ifdef GLM_CUDA
    if (!on) return;
    static char buf[1 << 16];
    glm_cuda_profile_text(buf, sizeof buf);
    fprintf(stderr, "profile of %s:\n%s\n", test, buf);
    glm_cuda_profile_reset();
#else
    (void)on; (void)test;
#endif
}

static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static int32_t rand_token(int n_vocab) {
    rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17;
    return (int32_t)(rng_state % (uint64_t)n_vocab);
}

/* Bytes of one weight matrix of rows x cols in the model's format. */
static double mat_bytes(double rows, double cols, int fmt) {
    if (fmt == GLM_FMT_BF16) return rows * cols * 2;
    if (fmt == GLM_FMT_FP8_BLOCK) return rows * cols + ceil(rows / 128) * ceil(cols / 128) * 4;
    return rows * cols + rows * 4;
}

typedef struct {
    double dense_bytes;     /* every non-expert matrix a step reads (lm_head included) */
    double expert_bytes;    /* one routed expert (gate, up, down) */
    double active_params;   /* multiply-adds per token in the linear layers (k experts) */
    int n_moe;
} model_cost;

static model_cost cost_of(const glm_hparams *hp, int fmt) {
    model_cost c = {0};
    const double D = hp->n_embd, Q = (double)hp->n_head * hp->head_dim, KV = (double)hp->n_head_kv * hp->head_dim;
    const double F = hp->n_ff, Fe = hp->n_ff_exp, Fs = (double)hp->n_ff_exp * hp->n_expert_shared;
    const double attn = mat_bytes(Q, D, fmt) + 2 * mat_bytes(KV, D, fmt) + mat_bytes(D, Q, fmt);
    const double attn_p = Q * D + 2 * KV * D + D * Q;
    c.n_moe = hp->n_layer - hp->n_dense_layer;
    c.expert_bytes = 3 * mat_bytes(Fe, D, fmt);
    for (int il = 0; il < hp->n_layer; il++) {
        c.dense_bytes += attn;
        c.active_params += attn_p;
        if (il < hp->n_dense_layer) {
            c.dense_bytes += 3 * mat_bytes(F, D, fmt);
            c.active_params += 3 * F * D;
        } else {
            c.dense_bytes += (double)hp->n_expert * D * 4;  /* router, float32 */
            if (hp->n_expert_shared > 0) c.dense_bytes += 3 * mat_bytes(Fs, D, fmt);
            c.active_params += (double)hp->n_expert * D + 3 * Fs * D + (double)hp->n_expert_used * 3 * Fe * D;
        }
    }
    c.dense_bytes += (double)hp->n_vocab * D * 2;  /* lm_head, BF16 */
    return c;
}

/* Pages of 16 tokens (the library's KV page) that hold n tokens. */
static int64_t kv_pages(int64_t n) { return (n + 15) / 16; }

/* Bytes the host can still give (MemAvailable in /proc/meminfo), or -1 when unknown. */
static double host_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return -1;
    char line[256];
    double kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lf kB", &kb) == 1) break;
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}

/* What a run needs besides the weights: the KV cache of kv_tokens tokens in total and the
 * activations of n_batch tokens a pass (the forward's buffers and the CPU backend's MoE
 * scratch, float32), with logits for n_logits rows; in bytes. */
static void run_bytes(const glm_hparams *hp, glm_device dev, glm_kv_type kv, double kv_tokens, double n_batch,
                      double n_logits, double *kv_bytes, double *act_bytes) {
    const double D = hp->n_embd, Q = (double)hp->n_head * hp->head_dim, KV = (double)hp->n_head_kv * hp->head_dim;
    double F = (double)hp->n_ff_exp * hp->n_expert_shared;
    if (hp->n_dense_layer > 0 && hp->n_ff > F) F = hp->n_ff;
    const double K = hp->n_expert_used > 0 ? hp->n_expert_used : 1;
    const double kv_elt = dev == GLM_DEVICE_CPU ? 4 : kv == GLM_KV_FP8 ? 1 + 4.0 / hp->head_dim : 2;
    *kv_bytes = kv_tokens * hp->n_layer * 2 * KV * kv_elt;
    *act_bytes = n_batch * 4 * (5 * D + 2 * Q + 2 * KV + F + 2 * K + 3 * D + hp->n_ff_exp + 2 * K) +
                 n_logits * hp->n_vocab * 4.0;
}

/* Exits with EXIT_FAIL and both numbers when the run's bytes exceed what the device has
 * (weights 0: not counted, a checkpoint mapped from its files on the CPU). */
static void check_memory(glm_device dev, double weights, double kv, double act) {
    const double need = weights + kv + act;
    double have = -1;
    const char *src = "MemAvailable in /proc/meminfo";
    if (dev == GLM_DEVICE_CPU) have = host_available();
#ifdef GLM_CUDA
    else {
        size_t fr = 0, tot = 0;
        if (cudaMemGetInfo(&fr, &tot) == cudaSuccess) have = (double)fr - (512 << 20); else cudaGetLastError();
        src = "free GPU memory less 512 MiB, cudaMemGetInfo";
    }
#endif
    if (have >= 0 && need > have) {
        char w[48] = "";
        if (weights > 0) snprintf(w, sizeof w, "weights %.1f GB, ", weights / 1e9);
        fprintf(stderr, PROG ": error: this run needs about %.1f GB of %s memory (%sKV cache %.1f GB, activations %.1f GB), "
                "%.1f GB available (%s)\n", need / 1e9, dev == GLM_DEVICE_CPU ? "host" : "GPU", w, kv / 1e9, act / 1e9,
                have / 1e9, src);
        exit(EXIT_FAIL);
    }
}

#include "bench-serve.h"

int main(int argc, char **argv) {
    const char *model_dir = NULL, *synth = NULL, *out_fmt = "md";
    int layers = 0, fmt = GLM_FMT_FP8_CHANNEL, reps = 3, n_threads = 0, probe = 1, profile = 0;
    glm_kv_type kv_type = GLM_KV_BF16;
    int *P = NULL, *N = NULL, *B = NULL, nP = 0, nN = 0, nB = 0;
    tool_init(PROG);
    glm_device dev = tool_default_device();
    tool_tp_opts tpo = tool_tp_default();
    serve_opts so = serve_default();
    tool_spec_opts spo = { 0, 0 };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return EXIT_OK; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_dir = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "--synthetic")) synth = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "--layers")) layers = tool_int(a, tool_arg(argc, argv, &i), 1, 1000);
        else if (!strcmp(a, "--fmt")) {
            const char *v = tool_arg(argc, argv, &i);
            if (!strcmp(v, "bf16")) fmt = GLM_FMT_BF16;
            else if (!strcmp(v, "fp8ch")) fmt = GLM_FMT_FP8_CHANNEL;
            else if (!strcmp(v, "fp8blk")) fmt = GLM_FMT_FP8_BLOCK;
            else tool_usage_error("--fmt expects bf16, fp8ch or fp8blk, got '%s'", v);
        } else if (!strcmp(a, "-p") || !strcmp(a, "--n-prompt") || !strcmp(a, "-n") || !strcmp(a, "--n-gen") ||
                   !strcmp(a, "-b") || !strcmp(a, "--batch")) {
            int **dst = a[1] == 'p' || !strcmp(a, "--n-prompt") ? &P : (a[1] == 'n' || !strcmp(a, "--n-gen")) ? &N : &B;
            int *cnt = dst == &P ? &nP : dst == &N ? &nN : &nB;
            free(*dst);
            const char *v = tool_arg(argc, argv, &i);
            if (tool_parse_int_list(v, dst, cnt)) tool_usage_error("%s expects a list like 512,2048, got '%s'", a, v);
            for (int j = 0; j < *cnt; j++)
                if ((*dst)[j] < (dst == &B ? 1 : 0)) tool_usage_error("%s: values must be %s, got %d", a, dst == &B ? "positive" : "0 or more", (*dst)[j]);
        } else if (!strcmp(a, "-r") || !strcmp(a, "--repetitions")) reps = tool_int(a, tool_arg(argc, argv, &i), 1, 1000);
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            out_fmt = tool_arg(argc, argv, &i);
            if (strcmp(out_fmt, "md") && strcmp(out_fmt, "json") && strcmp(out_fmt, "csv"))
                tool_usage_error("-o expects md, json or csv, got '%s'", out_fmt);
        } else if (!strcmp(a, "--device")) dev = tool_device(tool_arg(argc, argv, &i));
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) n_threads = tool_int(a, tool_arg(argc, argv, &i), 1, 4096);
        else if (!strcmp(a, "--kv-type")) kv_type = tool_kv_type(tool_arg(argc, argv, &i));
        else if (!strcmp(a, "--no-probe")) probe = 0;
        else if (!strcmp(a, "--profile")) profile = 1;
        else if (tool_tp_flag(argc, argv, &i, &tpo)) continue;
        else if (tool_spec_flag(argc, argv, &i, &spo)) continue;
        else if (serve_flag(argc, argv, &i, &so)) continue;
        else tool_usage_error("unknown argument '%s' (see --help)", a);
    }
    if (!nP && !P) { P = malloc(sizeof(int)); P[0] = 512; nP = 1; }
    if (!nN && !N) { N = malloc(sizeof(int)); N[0] = 128; nN = 1; }
    if (!nB && !B) { B = malloc(sizeof(int)); B[0] = 1; nB = 1; }
    glm_hparams hp;
    if (synth && glm_preset(synth, layers, &hp)) tool_usage_error("--synthetic: %s", glm_last_error());
    if (synth && spo.n_draft) hp.n_nextn = 1;   /* a random MTP layer to draft with */
    if (spo.n_draft && so.on) tool_usage_error("--draft: not with --serve (the scheduler does not draft yet)");
    glm_ctx_params spec_cp = glm_ctx_default_params();
    spec_cp.device = dev;
    const int spec_rc = tool_spec_apply(PROG, &spo, &spec_cp);
    if (spec_rc) return spec_rc;

    /* sizes in 64 bits: a context past INT32_MAX tokens or pages is refused, not wrapped */
    int maxP = 0, maxN = 0, maxB = 1;
    for (int i = 0; i < nP; i++) if (P[i] > maxP) maxP = P[i];
    for (int i = 0; i < nN; i++) if (N[i] > maxN) maxN = N[i];
    for (int i = 0; i < nB; i++) if (B[i] > maxB) maxB = B[i];
    /* a draft test holds a 16-token prompt, its tokens and a verify step's n_draft + 1 */
    const int spec_extra = spo.n_draft ? SPEC_PROMPT + spo.n_draft + 1 : 0;
    const int64_t n_ctx = (int64_t)(maxP > maxN + spec_extra ? maxP : maxN + spec_extra) + 16;
    if (n_ctx > INT32_MAX)
        tool_usage_error("%s %d: a test of %d tokens needs a context of %lld tokens, more than %d", maxP > maxN ? "-p" : "-n",
                         maxP > maxN ? maxP : maxN, maxP > maxN ? maxP : maxN, (long long)n_ctx, INT32_MAX);
    if ((int64_t)maxB * kv_pages(n_ctx) > INT32_MAX)
        tool_usage_error("-b %d: %d sequences of %lld tokens need %lld KV pages of 16 tokens, more than %d", maxB, maxB,
                         (long long)n_ctx, (long long)(maxB * kv_pages(n_ctx)), INT32_MAX);
    /* the CPU keeps the pages the largest test holds: one prefill, or maxB decoding sequences */
    int64_t pages = kv_pages(maxP) > maxB * kv_pages(maxN + 2) ? kv_pages(maxP) : maxB * kv_pages(maxN + 2);
    if (pages < kv_pages(maxN + spec_extra + 2)) pages = kv_pages(maxN + spec_extra + 2);

    /* the device before anything runs on it */
    if (dev == GLM_DEVICE_CUDA && !glm_cuda_available()) {
#ifdef GLM_CUDA
        fprintf(stderr, PROG ": error: --device cuda: no usable CUDA device\n");
#else
        fprintf(stderr, PROG ": error: --device cuda: this build has no CUDA backend (built without nvcc); use --device cpu\n");
#endif
        return EXIT_FAIL;
    }
    /* what the tests need, before anything is allocated */
    const glm_kv_type kv_run = dev == GLM_DEVICE_CPU ? GLM_KV_F32 : kv_type;
    int n_batch = maxP > maxB ? maxP : maxB;
    if (spo.n_draft && n_batch < spo.n_draft + 1) n_batch = spo.n_draft + 1;   /* a verify step's rows */
    double kv_bytes, act_bytes;
    if (synth) {
        glm_model *shapes = NULL;  /* shapes only: the weights' size without their data */
        if (glm_model_synthetic(&hp, (glm_weight_format)fmt, 0, 1234, &shapes)) {
            fprintf(stderr, PROG ": error: %s\n", glm_last_error());
            return EXIT_FAIL;
        }
        run_bytes(&hp, dev, kv_run, (double)pages * 16, n_batch, maxB, &kv_bytes, &act_bytes);
        check_memory(dev, (double)glm_model_n_bytes(shapes), kv_bytes, act_bytes);
        glm_model_free(shapes);
    }

    /* ceilings first, while the GPU is empty */
    double bw = 0, fp8_rate = 0;
#ifndef GLM_CUDA
    (void)probe;
#else
    if (dev == GLM_DEVICE_CUDA && probe) {
        if (glm_cu_probe_copy((size_t)1 << 30, 20, &bw)) {
            fprintf(stderr, PROG ": copy probe failed: %s\n", glm_last_error());
            bw = 0;
        }
        if (glm_cu_probe_fp8_gemm(8192, 20, &fp8_rate)) {
            fprintf(stderr, PROG ": FP8 GEMM probe failed: %s\n", glm_last_error());
            fp8_rate = 0;
        }
        if (bw > 0 && fp8_rate > 0)
            fprintf(stderr, PROG ": copy bandwidth %.0f GB/s (read+write), FP8 GEMM %.0f TFLOP/s (8192^3, cuBLASLt)\n",
                    bw / 1e9, fp8_rate / 1e12);
    }
#endif

    glm_model *m = NULL;
    if (synth) {
        if (glm_model_synthetic(&hp, (glm_weight_format)fmt, dev == GLM_DEVICE_CPU, 1234, &m)) {
            fprintf(stderr, PROG ": error: %s\n", glm_last_error());
            return EXIT_FAIL;
        }
    } else {
        m = tool_load_model_spec(PROG, model_dir ? model_dir : tool_default_model(), &spo);
        if (!m) return EXIT_FAIL;
        const char *d = glm_model_desc(m);
        fmt = strstr(d, "fp8-block") ? GLM_FMT_FP8_BLOCK : strstr(d, "fp8") ? GLM_FMT_FP8_CHANNEL : GLM_FMT_BF16;
        /* the weights are mapped from the files (the page cache holds them); on a GPU they are copied */
        run_bytes(glm_model_hparams(m), dev, kv_run, (double)pages * 16, n_batch, maxB, &kv_bytes, &act_bytes);
        check_memory(dev, dev == GLM_DEVICE_CPU ? 0 : (double)glm_model_n_bytes(m), kv_bytes, act_bytes);
    }
    hp = *glm_model_hparams(m);
    if (so.on) {
        int src = bench_serve(m, dev, n_threads, kv_run, out_fmt, &so, &tpo);
        tool_tp_free(&tpo);
        glm_model_free(m);
        free(P); free(N); free(B);
        return src;
    }
    tool_warn_ctx(PROG, maxP > maxN ? maxP : maxN, m);

    glm_ctx_params cp = glm_ctx_default_params();
    cp.device = dev;
    cp.n_threads = n_threads;
    cp.n_ctx = (int)n_ctx;
    cp.n_seq_max = maxB;
    cp.n_batch = n_batch;
    cp.kv_type = kv_run;
    if (dev == GLM_DEVICE_CPU) cp.n_kv_pages = (int)pages;
    cp.mtp = spec_cp.mtp;
    int tp_rc = tool_tp_apply(&tpo, &hp, &cp);
    tool_tp_free(&tpo);
    if (tp_rc) { glm_model_free(m); free(P); free(N); free(B); return tp_rc; }
    glm_ctx *ctx = NULL;
    glm_spec *spec = NULL;   /* --draft */
#ifdef GLM_CUDA
    if (profile) setenv("GLM_CUDA_PROFILE", "1", 1);
#endif
    double t0 = tool_now();
    int rc = glm_ctx_new(m, &cp, &ctx);
    if (rc) { fprintf(stderr, PROG ": error: %s\n", glm_last_error()); glm_model_free(m); return EXIT_FAIL; }
    fprintf(stderr, PROG ": %s on %s, ready in %.1f s, %d KV pages\n", glm_model_desc(m),
            dev == GLM_DEVICE_CUDA ? "cuda" : "cpu", tool_now() - t0, glm_ctx_kv_pages_total(ctx));

    const model_cost mc = cost_of(&hp, fmt);
    const double kv_tok = (double)hp.n_layer * 2 * hp.n_head_kv * hp.head_dim * (kv_type == GLM_KV_FP8 ? 1.0 : 2.0);
    result *res = calloc((size_t)(nP + nN * nB + nN), sizeof(result));
    int nres = 0;
    double *tv = calloc((size_t)reps, sizeof(double));
    const int n_toks = cp.n_batch > maxB ? cp.n_batch : maxB;
    int32_t *toks = malloc(sizeof(int32_t) * (size_t)(n_toks > SPEC_PROMPT ? n_toks : SPEC_PROMPT));
    int32_t *seqs = malloc(sizeof(int32_t) * (size_t)maxB);
    int8_t *want = malloc((size_t)maxB);

    for (int ip = 0; ip < nP; ip++) {
        const int n = P[ip];
        if (!n) continue;
        result *r = &res[nres++];
        snprintf(r->name, sizeof r->name, "pp%d", n);
        r->n_tok = n;
        for (int rep = -1; rep < reps; rep++) {  /* rep -1 warms up */
            glm_ctx_seq_clear(ctx, 0);
            for (int i = 0; i < n; i++) toks[i] = rand_token(hp.n_vocab);
            glm_batch b = {n, toks, NULL, NULL};
            double s = tool_now();
            if ((rc = glm_ctx_decode(ctx, &b))) goto fail;
            r->kv_peak = 1.0 - (double)glm_ctx_kv_pages_free(ctx) / glm_ctx_kv_pages_total(ctx);
            if (rep >= 0) tv[rep] = n / (tool_now() - s);
        }
        stats(tv, reps, &r->mean, &r->sd);
        print_profile(profile, r->name);
        const double flops = 2.0 * mc.active_params * n + 4.0 * hp.n_layer * hp.n_head * hp.head_dim * 0.5 * (double)n * n +
                             2.0 * hp.n_vocab * hp.n_embd;
        r->floor_detail = flops;
        r->floor_tps = fp8_rate > 0 ? n / (flops / fp8_rate) : 0;
    }
    glm_ctx_seq_clear(ctx, 0);

    for (int in = 0; in < nN; in++) {
        for (int ib = 0; ib < nB; ib++) {
            const int n = N[in], nb = B[ib];
            if (!n) continue;
            result *r = &res[nres++];
            snprintf(r->name, sizeof r->name, "tg%d b%d", n, nb);
            r->n_tok = n * nb;
            for (int s = 0; s < nb; s++) { seqs[s] = s; want[s] = 1; }
            for (int rep = -1; rep < reps; rep++) {
                for (int s = 0; s < nb; s++) glm_ctx_seq_clear(ctx, s);
                const int steps = rep < 0 ? 2 : n;
                double s0 = tool_now();
                for (int st = 0; st < steps; st++) {
                    for (int s = 0; s < nb; s++) toks[s] = rand_token(hp.n_vocab);
                    glm_batch b = {nb, toks, seqs, want};
                    if ((rc = glm_ctx_decode(ctx, &b))) goto fail;
                    const double held = 1.0 - (double)glm_ctx_kv_pages_free(ctx) / glm_ctx_kv_pages_total(ctx);
                    if (held > r->kv_peak) r->kv_peak = held;
                }
                if (rep >= 0) tv[rep] = (double)n * nb / (tool_now() - s0);
            }
            for (int s = 0; s < nb; s++) glm_ctx_seq_clear(ctx, s);
            stats(tv, reps, &r->mean, &r->sd);
            print_profile(profile, r->name);
            r->ms_step = 1000.0 * nb / r->mean;
            const double E = hp.n_expert, k = hp.n_expert_used;
            const double uniq = E > 0 ? E * (1.0 - pow(1.0 - k / E, nb)) : 0;
            const double bytes = mc.dense_bytes + mc.n_moe * uniq * mc.expert_bytes + nb * kv_tok * (n / 2.0);
            r->floor_detail = bytes;
            r->floor_tps = bw > 0 ? nb / (bytes / bw) : 0;
        }
    }

    /* speculative decoding at batch 1: n tokens after a random prompt, greedy */
    if (spo.n_draft) {
        glm_sampler_params sp = glm_sampler_default_params();
        sp.temp = 0;
        if ((rc = glm_spec_new(ctx, spo.n_draft, &sp, &spec))) goto fail;
    }
    for (int in = 0; spec && in < nN; in++) {
        const int n = N[in];
        if (!n) continue;
        result *r = &res[nres++];
        snprintf(r->name, sizeof r->name, "tg%d d%d", n, spo.n_draft);
        r->n_tok = n;
        r->draft = spo.n_draft;
        glm_spec_stats a, b;
        glm_spec_get_stats(spec, &a);
        for (int rep = -1; rep < reps; rep++) {
            glm_spec_seq_clear(spec, 0);
            for (int i = 0; i < SPEC_PROMPT; i++) toks[i] = rand_token(hp.n_vocab);
            int32_t out[GLM_SPEC_MAX_DRAFT + 1];
            int got = 1, k;
            if ((rc = glm_spec_prefill(spec, 0, toks, SPEC_PROMPT, &out[0]))) goto fail;
            if (rep < 0) glm_spec_get_stats(spec, &a);
            double s0 = tool_now();
            while (got < n) {
                if ((rc = glm_spec_step(spec, 0, out, &k))) goto fail;
                got += k;
                const double held = 1.0 - (double)glm_ctx_kv_pages_free(ctx) / glm_ctx_kv_pages_total(ctx);
                if (held > r->kv_peak) r->kv_peak = held;
            }
            if (rep >= 0) tv[rep] = (double)got / (tool_now() - s0);
            if (rep < 0) glm_spec_get_stats(spec, &a);
        }
        glm_spec_get_stats(spec, &b);
        glm_spec_seq_clear(spec, 0);
        stats(tv, reps, &r->mean, &r->sd);
        r->ms_step = 1000.0 / r->mean;
        r->acceptance = b.drafted > a.drafted ? (double)(b.accepted - a.accepted) / (double)(b.drafted - a.drafted) : 0;
        r->mean_accepted = b.steps > a.steps ? (double)(b.accepted - a.accepted) / (double)(b.steps - a.steps) : 0;
    }
    glm_spec_free(spec);
    spec = NULL;

    /* report */
    const char *desc = glm_model_desc(m);
    const char *dname = dev == GLM_DEVICE_CUDA ? "cuda" : "cpu";
    if (!strcmp(out_fmt, "md")) {
        printf("| model | device | test | t/s | ms/step | floor t/s | of floor | KV |\n");
        printf("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |\n");
        for (int i = 0; i < nres; i++) {
            const result *r = &res[i];
            char ms[32] = "", fl[32] = "n/a", fr[32] = "n/a";
            if (r->ms_step > 0) snprintf(ms, sizeof ms, "%.2f", r->ms_step);
            if (r->floor_tps > 0) {
                snprintf(fl, sizeof fl, "%.1f", r->floor_tps);
                snprintf(fr, sizeof fr, "%.1f%%", 100.0 * r->mean / r->floor_tps);
            }
            printf("| %s | %s | %s | %.2f ± %.2f | %s | %s | %s | %.1f%% |\n", desc, dname, r->name, r->mean, r->sd, ms, fl, fr,
                   100 * r->kv_peak);
        }
        for (int i = 0; i < nres; i++)
            if (res[i].draft)
                printf("\n%s: draft %d, acceptance %.3f, mean accepted length %.2f (greedy, random prompt)\n", res[i].name,
                       res[i].draft, res[i].acceptance, res[i].mean_accepted);
        if (bw > 0 || fp8_rate > 0)
            printf("\ncopy bandwidth %.0f GB/s (read+write); FP8 GEMM %.0f TFLOP/s (cuBLASLt 8192^3). "
                   "Decode floor: weights touched (expected unique experts) + KV read over the bandwidth; "
                   "prefill floor: FLOPs over the FP8 rate.\n", bw / 1e9, fp8_rate / 1e12);
    } else if (!strcmp(out_fmt, "csv")) {
        printf("model,device,test,n_tokens,tps_mean,tps_sd,ms_step,floor_tps,floor_fraction,floor_bytes_or_flops,copy_gbps,fp8_tflops,"
               "kv_peak%s\n", spo.n_draft ? ",draft,acceptance,mean_accepted_length" : "");
        for (int i = 0; i < nres; i++) {
            const result *r = &res[i];
            printf("\"%s\",%s,%s,%d,%.4f,%.4f,%.4f,%.4f,%.4f,%.6g,%.1f,%.1f,%.4f", desc, dname, r->name, r->n_tok, r->mean,
                   r->sd, r->ms_step, r->floor_tps, r->floor_tps > 0 ? r->mean / r->floor_tps : 0, r->floor_detail, bw / 1e9,
                   fp8_rate / 1e12, r->kv_peak);
            if (spo.n_draft) printf(",%d,%.4f,%.4f", r->draft, r->acceptance, r->mean_accepted);   /* --draft's columns */
            printf("\n");
        }
    } else {
        printf("{\n  \"model\": \"%s\",\n  \"device\": \"%s\",\n  \"copy_gbps\": %.1f,\n  \"fp8_tflops\": %.1f,\n  \"tests\": [\n",
               desc, dname, bw / 1e9, fp8_rate / 1e12);
        for (int i = 0; i < nres; i++) {
            const result *r = &res[i];
            printf("    {\"test\": \"%s\", \"n_tokens\": %d, \"tps_mean\": %.4f, \"tps_sd\": %.4f, \"ms_step\": %.4f, "
                   "\"floor_tps\": %.4f, \"floor_fraction\": %.4f, \"floor_bytes_or_flops\": %.6g, \"kv_peak\": %.4f",
                   r->name, r->n_tok, r->mean, r->sd, r->ms_step, r->floor_tps,
                   r->floor_tps > 0 ? r->mean / r->floor_tps : 0, r->floor_detail, r->kv_peak);
            if (spo.n_draft)
                printf(", \"draft\": %d, \"acceptance\": %.4f, \"mean_accepted_length\": %.4f", r->draft, r->acceptance, r->mean_accepted);
            printf("}%s\n", i + 1 < nres ? "," : "");
        }
        printf("  ]\n}\n");
    }
    glm_ctx_free(ctx);
    glm_model_free(m);
    free(res); free(tv); free(toks); free(seqs); free(want); free(P); free(N); free(B);
    return EXIT_OK;
fail:
    fprintf(stderr, PROG ": error: %s\n", glm_last_error());
    glm_spec_free(spec);
    glm_ctx_free(ctx);
    glm_model_free(m);
    return EXIT_FAIL;
}
