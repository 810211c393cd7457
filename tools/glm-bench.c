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
/* The collective model's defaults (--coll-alpha-us, --coll-busbw-gbs): the bus bandwidth
 * is the NCCL developers' figure for 8 H100 GPUs on NVLink with the ring algorithm
 * (NVIDIA/nccl-tests issue 212: about 370 GB/s of effective NVLink bandwidth; NVLS, which
 * the library turns off, reaches about 480); the latency is an assumption. */
#define COLL_ALPHA_US 20.0
#define COLL_BUSBW_GBS 370.0
#define COLL_SOURCE "busbw: NCCL ring on 8 H100 over NVLink, NVIDIA/nccl-tests issue 212; alpha: an assumption"

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
        "  -d, --depth N            tokens each sequence holds before a decode test (prefilled,\n"
        "                           untimed; the test is named tg<N> b<B> @ d<N>; default 0)\n"
        "  -r, --repetitions N      repetitions of each test (default 3)\n"
        "  -o, --output md|json|csv (default md)\n"
        "  --device cpu|cuda        backend (default: cuda when usable, else cpu)\n"
        "  -t, --threads N          CPU threads (default: all cores)\n"
        "  --kv-type bf16|fp8       CUDA KV cache type (default bf16)\n"
        "  --no-probe               skip the bandwidth and FP8 GEMM measurements\n"
        "  --profile                CUDA: GPU time per op after each test on stderr (graphs off)\n"
        "  --project-only           with --tp N: run the tests on rank 0's slice alone only (no sharded\n"
        "                           run: a model larger than the GPU) and print the projection\n"
        "  --project                with --tp N: run the decode tests again on rank 0's slice alone\n"
        "                           (its own step, collectives skipped) and print a projected\n"
        "                           N-GPU step: own step + modelled collectives (2 all-reduces a\n"
        "                           layer of batch x n_embd x 4 bytes, one all-gather of the\n"
        "                           logits); on by default with --device cuda when the ranks\n"
        "                           share a GPU (shared-gpu); any device\n"
        "  --coll-alpha-us A        modelled latency of one collective (default %.0f us, an\n"
        "                           assumed value, not a measurement)\n"
        "  --coll-busbw-gbs B       modelled NCCL bus bandwidth (default %.0f GB/s: the effective\n"
        "                           NVLink bandwidth of NCCL's ring on 8 H100 GPUs, NVLS off,\n"
        "                           given by the NCCL developers in NVIDIA/nccl-tests issue 212);\n"
        "                           a collective of S bytes costs A + S / B x 2(N-1)/N\n"
        "                           (all-reduce) or A + S / B x (N-1)/N (all-gather), as\n"
        "                           nccl-tests defines bus bandwidth\n"
        "serving throughput (the scheduler glm-server runs; replaces -p/-n/-b):\n"
        "  --serve                  submit --requests requests at once, -np decoding together\n"
        "  -np, --parallel N        requests decoding together (default 8)\n"
        "  --requests R             requests in all (default: -np)\n"
        "  --in L, --out M          prompt and output tokens of each request (default 512, 128)\n"
        "  --in-dist LO:HI          prompt lengths drawn uniformly from [LO, HI]\n"
        "  --out-dist LO:HI         output lengths drawn uniformly from [LO, HI]\n"
        "  --batch-tokens N         tokens a step feeds at most (default 8192 on CUDA, 512 on the CPU)\n"
        "  --kv-pages N             KV pages of 16 tokens (default: every request at full length)\n"
        "  --shared-prefix S        S prompt tokens common to all requests (the prefix cache)\n"
        "  --no-prefix-cache        do not share prompt pages\n",
        tool_default_model(), COLL_ALPHA_US, COLL_BUSBW_GBS);
    tool_tp_usage(f, 27);
    tool_spec_usage(f, 27);
    fprintf(f, "                           with --draft, each -n test runs once more at batch 1 as\n"
               "                           tg<N> d<draft>: speculative decoding after a 16-token prompt,\n"
               "                           with the acceptance rate (a synthetic model's random MTP layer\n"
               "                           accepts next to nothing); and the cost of a verify step of\n"
               "                           draft + 1 tokens against a one-token step, with the projected\n"
               "                           speed-up at acceptance 0.6, 0.7 and 0.8; with --serve, the\n"
               "                           scheduler drafts for every decoding request and the report\n"
               "                           adds the fraction of drafted tokens accepted\n");
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
    int n_seq;          /* decode test: sequences decoding together, else 0 */
    int n_gen;          /* decode test: steps */
    double rank_bytes;  /* --tp N > 1, decode: bytes the busiest rank reads a step */
    double coll_ms;     /* --tp N > 1, decode: rank 0's host milliseconds in collectives a step */
    double own_ms;      /* projection: milliseconds a step of rank 0's slice alone */
    double model_coll_ms; /* projection: modelled collectives a step, milliseconds */
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

/* Expected number of distinct experts the busiest of N ranks holds among those a batch of
 * nb tokens touches in one layer, each token choosing k of E experts uniformly (rank r
 * holds experts [r*E/N, (r+1)*E/N)): a seeded Monte Carlo, the same for every run. */
static double ep_busiest(int E, int k, int nb, int N) {
    if (E <= 0 || k <= 0 || N <= 1) return 0;
    if (k > E) k = E;
    int draws = (int)(400000.0 / ((double)nb * k + 1));
    draws = draws < 500 ? 500 : draws > 20000 ? 20000 : draws;
    uint64_t st = 0x9e3779b97f4a7c15ull;
    unsigned char *hit = malloc((size_t)E);
    int *cnt = malloc(sizeof(int) * (size_t)N), *owner = malloc(sizeof(int) * (size_t)E);
    if (!hit || !cnt || !owner) { free(hit); free(cnt); free(owner); return (double)k * nb / N; }
    for (int r = 0; r < N; r++)
        for (int e = (int)((int64_t)E * r / N); e < (int)((int64_t)E * (r + 1) / N); e++) owner[e] = r;
    int pick[64];   /* one token's experts (k <= 64; more are counted as 64) */
    if (k > 64) k = 64;
    double sum = 0;
    for (int d = 0; d < draws; d++) {
        memset(hit, 0, (size_t)E);
        memset(cnt, 0, sizeof(int) * (size_t)N);
        for (int t = 0; t < nb; t++)
            for (int j = 0; j < k; j++) {   /* k distinct experts of E: Floyd's sampling */
                st ^= st << 13; st ^= st >> 7; st ^= st << 17;
                const int top = E - k + j;
                int x = (int)(st % (uint64_t)(top + 1));
                for (int i = 0; i < j; i++) if (pick[i] == x) { x = top; break; }
                pick[j] = x;
                if (!hit[x]) { hit[x] = 1; cnt[owner[x]]++; }
            }
        int mx = 0;
        for (int r = 0; r < N; r++) if (cnt[r] > mx) mx = cnt[r];
        sum += mx;
    }
    free(hit); free(cnt); free(owner);
    return sum / draws;
}

/* Bytes the busiest of N ranks (N > 1) reads in one decode step of nb sequences at a mean
 * context of ctx tokens: its slice of attention, dense MLP, shared expert and lm_head
 * (ceil(V/N) rows), the replicated router and the batch's embedding rows, its part of the
 * routed experts the batch touches (tp: a 1/N slice of every touched expert; ep: the
 * busiest rank's whole experts) and its heads' KV cache. */
static double rank_step_bytes(const glm_hparams *hp, int fmt, int N, int split, int nb, double ctx, double kv_elt) {
    const double D = hp->n_embd, Q = (double)hp->n_head * hp->head_dim / N, KV = (double)hp->n_head_kv * hp->head_dim / N;
    const double F = ceil((double)hp->n_ff / N), Fe = hp->n_ff_exp, Fs = ceil((double)hp->n_ff_exp * hp->n_expert_shared / N);
    const double E = hp->n_expert, k = hp->n_expert_used;
    const double attn = mat_bytes(Q, D, fmt) + 2 * mat_bytes(KV, D, fmt) + mat_bytes(D, Q, fmt);
    double experts = 0;   /* a MoE layer's routed bytes on the busiest rank */
    if (E > 0) {
        if (split == GLM_MOE_SPLIT_EP) {
            experts = ep_busiest(hp->n_expert, hp->n_expert_used, nb, N) * 3 * mat_bytes(Fe, D, fmt);
        } else {
            const double Fr = ceil(Fe / N), uniq = E * (1.0 - pow(1.0 - k / E, nb));
            experts = uniq * (2 * mat_bytes(Fr, D, fmt) + mat_bytes(D, Fr, fmt));
        }
    }
    double b = 0;
    for (int il = 0; il < hp->n_layer; il++) {
        b += attn;
        if (il < hp->n_dense_layer) {
            b += 2 * mat_bytes(F, D, fmt) + mat_bytes(D, F, fmt);
        } else {
            b += E * D * 4 + experts;   /* router (float32, replicated) */
            if (hp->n_expert_shared > 0) b += 2 * mat_bytes(Fs, D, fmt) + mat_bytes(D, Fs, fmt);
        }
    }
    b += ceil((double)hp->n_vocab / N) * D * 2;    /* lm_head rows, BF16 */
    b += (double)nb * D * 2;                        /* the batch's embedding rows, BF16 */
    b += (double)nb * ctx * hp->n_layer * 2 * KV * kv_elt;
    return b;
}

/* Modelled seconds of one decode step's collectives over N GPUs: 2 all-reduces a layer of
 * nb x n_embd float32 and one all-gather of the logits (ceil(V/N) rows of every rank), each
 * alpha + bytes / busbw scaled as nccl-tests defines bus bandwidth (all-reduce 2(N-1)/N,
 * all-gather (N-1)/N of the whole message). */
static double coll_model_s(const glm_hparams *hp, int N, int nb, double alpha_s, double busbw) {
    const double ar = (double)nb * hp->n_embd * 4, ag = (double)nb * ceil((double)hp->n_vocab / N) * N * 4;
    return 2.0 * hp->n_layer * (alpha_s + ar / busbw * 2.0 * (N - 1) / N) + alpha_s + ag / busbw * (double)(N - 1) / N;
}

/* What glm_ctx_comm_seconds measures for a communicator kind (glm_ctx_tp_kind). */
static const char *coll_meaning(const char *kind) {
    if (!strcmp(kind, "local"))
        return "host time rank 0 spent in the collectives a decode step, the whole sums (ranks as CPU threads, sums in "
               "host memory)";
    if (!strcmp(kind, "shared-gpu"))
        return "host time rank 0 spent in the collectives a decode step, the whole sums (the ranks share one GPU: each sum "
               "goes through host memory and no CUDA graphs run, so the measured t/s is not that of N GPUs)";
    if (!strcmp(kind, "nccl"))
        return "host time rank 0 spent enqueueing the collectives a decode step, not the sums (they run on the GPUs, "
               "inside the step's time)";
    return "no collectives";
}

/* Bytes as text with a unit (10^3 steps). */
static void fmt_bytes(char *buf, size_t n, double b) {
    if (b >= 1e9) snprintf(buf, n, "%.2f GB", b / 1e9);
    else if (b >= 1e6) snprintf(buf, n, "%.2f MB", b / 1e6);
    else snprintf(buf, n, "%.1f kB", b / 1e3);
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

/* Whether glm-bench checks the memory of a run over n_tp ranks itself: not on CUDA with
 * several ranks (the library checks each GPU's share of the weights, KV pages and scratch
 * before loading and names both numbers); on the CPU the ranks are threads sharing the
 * host's memory: the weights are not copied (views), the KV cache is split between them
 * (the same bytes in all), and each rank has its own activation buffers (*act x n_tp). */
static int tp_check_memory(glm_device dev, int n_tp, double *act) {
    if (n_tp <= 1) return 1;
    if (dev == GLM_DEVICE_CUDA) return 0;
    *act *= n_tp;
    return 1;
}

#include "bench-serve.h"

/* -d: depth random tokens into each of sequences 0..nb-1 (one prefill each, untimed). */
static int fill_depth(glm_ctx *ctx, int depth, int nb, int n_vocab) {
    if (!depth) return GLM_OK;
    int32_t *t = malloc(sizeof(int32_t) * (size_t)depth * 2);
    if (!t) { fprintf(stderr, PROG ": error: out of memory\n"); return GLM_ERR_OOM; }
    int32_t *sq = t + depth;
    int rc = GLM_OK;
    for (int s = 0; s < nb && !rc; s++) {
        for (int i = 0; i < depth; i++) { t[i] = rand_token(n_vocab); sq[i] = s; }
        glm_batch b = {depth, t, sq, NULL};
        rc = glm_ctx_decode(ctx, &b);
    }
    free(t);
    return rc;
}

int main(int argc, char **argv) {
    const char *model_dir = NULL, *synth = NULL, *out_fmt = "md";
    int layers = 0, fmt = GLM_FMT_FP8_CHANNEL, reps = 3, n_threads = 0, probe = 1, profile = 0, project = 0;
    int project_only = 0;  /* --project-only: rank 0's slice alone, no sharded run */
    int depth = 0;         /* -d: tokens in each sequence before a decode test */
    double coll_alpha_us = COLL_ALPHA_US, coll_busbw_gbs = COLL_BUSBW_GBS;
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
        } else if (!strcmp(a, "-d") || !strcmp(a, "--depth")) depth = tool_int(a, tool_arg(argc, argv, &i), 0, 1 << 24);
        else if (!strcmp(a, "-r") || !strcmp(a, "--repetitions")) reps = tool_int(a, tool_arg(argc, argv, &i), 1, 1000);
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            out_fmt = tool_arg(argc, argv, &i);
            if (strcmp(out_fmt, "md") && strcmp(out_fmt, "json") && strcmp(out_fmt, "csv"))
                tool_usage_error("-o expects md, json or csv, got '%s'", out_fmt);
        } else if (!strcmp(a, "--device")) dev = tool_device(tool_arg(argc, argv, &i));
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) n_threads = tool_int(a, tool_arg(argc, argv, &i), 1, 4096);
        else if (!strcmp(a, "--kv-type")) kv_type = tool_kv_type(tool_arg(argc, argv, &i));
        else if (!strcmp(a, "--no-probe")) probe = 0;
        else if (!strcmp(a, "--profile")) profile = 1;
        else if (!strcmp(a, "--project")) project = 1;
        else if (!strcmp(a, "--project-only")) project = project_only = 1;
        else if (!strcmp(a, "--coll-alpha-us")) coll_alpha_us = tool_float_in(a, tool_arg(argc, argv, &i), '[', 0, 1e6, ']');
        else if (!strcmp(a, "--coll-busbw-gbs")) coll_busbw_gbs = tool_float_in(a, tool_arg(argc, argv, &i), '(', 0, 1e6, ']');
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
    so.n_draft = spo.n_draft;   /* --serve: the scheduler drafts */
    if (project && tpo.n_tp < 2) tool_usage_error("--project: projects a step over --tp N ranks, N 2 or more");
    if (project && so.on) tool_usage_error("--project: not with --serve");
    if (depth && so.on) tool_usage_error("-d: not with --serve (its prompts are --in)");
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
    const int64_t n_ctx = (int64_t)(maxP > (int64_t)depth + maxN + spec_extra ? maxP : (int64_t)depth + maxN + spec_extra) + 16;
    if (n_ctx > INT32_MAX)
        tool_usage_error("%s %d: a test of %d tokens needs a context of %lld tokens, more than %d", maxP > maxN ? "-p" : "-n",
                         maxP > maxN ? maxP : maxN, maxP > maxN ? maxP : maxN, (long long)n_ctx, INT32_MAX);
    if ((int64_t)maxB * kv_pages(n_ctx) > INT32_MAX)
        tool_usage_error("-b %d: %d sequences of %lld tokens need %lld KV pages of 16 tokens, more than %d", maxB, maxB,
                         (long long)n_ctx, (long long)(maxB * kv_pages(n_ctx)), INT32_MAX);
    /* the CPU keeps the pages the largest test holds: one prefill, or maxB decoding sequences */
    int64_t pages = kv_pages(maxP) > maxB * kv_pages((int64_t)depth + maxN + 2) ? kv_pages(maxP) : maxB * kv_pages((int64_t)depth + maxN + 2);
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
        if (tp_check_memory(dev, tpo.n_tp, &act_bytes))
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
        /* the fixed-batch tests check once the ranks are known (on CUDA they may be chosen from the model) */
        if (so.on && tp_check_memory(dev, tpo.n_tp, &act_bytes))
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
    int tp_rc = tool_tp_apply(&tpo, m, &cp);
    if (tp_rc) { tool_tp_free(&tpo); glm_model_free(m); free(P); free(N); free(B); return tp_rc; }
    /* --dist-init: the processes of ranks other than 0 run every test and report nothing */
    if (tool_tp_quiet() && !freopen("/dev/null", "w", stdout)) {
        fprintf(stderr, PROG ": error: /dev/null: cannot open\n");
        tool_tp_free(&tpo); glm_model_free(m); free(P); free(N); free(B);
        return EXIT_FAIL;
    }
    const int n_tp = cp.n_tp > 1 ? cp.n_tp : 1;
    if (!synth && tp_check_memory(dev, n_tp, &act_bytes))
        check_memory(dev, dev == GLM_DEVICE_CPU ? 0 : (double)glm_model_n_bytes(m), kv_bytes, act_bytes);
    glm_ctx *ctx = NULL;
    glm_spec *spec = NULL;   /* --draft */
#ifdef GLM_CUDA
    if (profile) setenv("GLM_CUDA_PROFILE", "1", 1);
#endif
    double t0 = tool_now();
    cp.tp_solo = project_only;
    int rc = glm_ctx_new(m, &cp, &ctx);
    if (rc) { fprintf(stderr, PROG ": error: %s\n", glm_last_error()); glm_model_free(m); return EXIT_FAIL; }
    if (project_only)
        fprintf(stderr, PROG ": --project-only: rank 0 of %d alone (its slice, collectives skipped); the decode rows are "
                "its own step against its own byte floor\n", n_tp);
    fprintf(stderr, PROG ": %s on %s, ready in %.1f s, %d KV pages\n", glm_model_desc(m),
            dev == GLM_DEVICE_CUDA ? "cuda" : "cpu", tool_now() - t0, glm_ctx_kv_pages_total(ctx));
    char tp_kind[32];   /* how the ranks sum: none, local, nccl, shared-gpu */
    snprintf(tp_kind, sizeof tp_kind, "%s", glm_ctx_tp_kind(ctx));
    if (n_tp > 1 && !strcmp(tp_kind, "shared-gpu")) project = 1;

    const model_cost mc = cost_of(&hp, fmt);
    const double kv_elt = kv_type == GLM_KV_FP8 ? 1.0 : 2.0;   /* bytes of a cached value */
    const double kv_tok = (double)hp.n_layer * 2 * hp.n_head_kv * hp.head_dim * kv_elt;
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
            if (depth) snprintf(r->name, sizeof r->name, "tg%d b%d @ d%d", n, nb, depth);
            else snprintf(r->name, sizeof r->name, "tg%d b%d", n, nb);
            r->n_tok = n * nb;
            r->n_seq = nb;
            r->n_gen = n;
            for (int s = 0; s < nb; s++) { seqs[s] = s; want[s] = 1; }
            double comm0 = 0;
            for (int rep = -1; rep < reps; rep++) {
                if (rep == 0) comm0 = glm_ctx_comm_seconds(ctx, NULL);
                for (int s = 0; s < nb; s++) glm_ctx_seq_clear(ctx, s);
                if ((rc = fill_depth(ctx, depth, nb, hp.n_vocab))) goto fail;
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
            if (n_tp > 1) r->coll_ms = 1000.0 * (glm_ctx_comm_seconds(ctx, NULL) - comm0) / ((double)reps * n);
            for (int s = 0; s < nb; s++) glm_ctx_seq_clear(ctx, s);
            stats(tv, reps, &r->mean, &r->sd);
            print_profile(profile, r->name);
            r->ms_step = 1000.0 * nb / r->mean;
            const double E = hp.n_expert, k = hp.n_expert_used;
            const double uniq = E > 0 ? E * (1.0 - pow(1.0 - k / E, nb)) : 0;
            double bytes = mc.dense_bytes + mc.n_moe * uniq * mc.expert_bytes + nb * kv_tok * (depth + n / 2.0);
            if (n_tp > 1) bytes = r->rank_bytes = rank_step_bytes(&hp, fmt, n_tp, cp.moe_split, nb, depth + n / 2.0, kv_elt);
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
            if ((rc = glm_spec_prefill(spec, 0, toks, SPEC_PROMPT, &out[0]))) {
                if (rc != GLM_ERR_NOT_IMPLEMENTED) goto fail;
                /* a synthetic model on CUDA: the MTP layer reads its embedding rows from the host */
                fprintf(stderr, PROG ": --draft: %s; the drafting test is left out, the verify step is measured\n",
                        glm_last_error());
                nres--;
                rc = GLM_OK;
                break;
            }
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
        if (&res[nres - 1] != r) break;   /* left out above */
        glm_spec_get_stats(spec, &b);
        glm_spec_seq_clear(spec, 0);
        stats(tv, reps, &r->mean, &r->sd);
        r->ms_step = 1000.0 / r->mean;
        r->acceptance = b.drafted > a.drafted ? (double)(b.accepted - a.accepted) / (double)(b.drafted - a.drafted) : 0;
        r->mean_accepted = b.steps > a.steps ? (double)(b.accepted - a.accepted) / (double)(b.steps - a.steps) : 0;
    }
    glm_spec_free(spec);
    spec = NULL;

    /* the verify step: the draft + 1 tokens of one sequence in one pass (what checks the
     * drafts; logits for every row) against a one-token step, after a 16-token prompt */
    double verify_ms = 0, one_ms = 0;
    if (spo.n_draft && !project_only) {
        const int nv = spo.n_draft + 1, R = reps * 16;
        int8_t all[GLM_SPEC_MAX_DRAFT + 1];
        memset(all, 1, sizeof all);
        glm_ctx_seq_clear(ctx, 0);
        for (int i = 0; i < SPEC_PROMPT; i++) toks[i] = rand_token(hp.n_vocab);
        glm_batch pb = {SPEC_PROMPT, toks, NULL, NULL};
        if ((rc = glm_ctx_decode(ctx, &pb))) goto fail;
        for (int w = 0; w < 2; w++) {      /* w = 0: one token; 1: the verify step */
            const int T = w ? nv : 1;
            double s0 = 0;
            for (int it = -2; it < R; it++) {   /* two warm-up passes (graph capture) */
                if (it == 0) s0 = tool_now();
                for (int i = 0; i < T; i++) toks[i] = rand_token(hp.n_vocab);
                glm_batch vb = {T, toks, NULL, all};
                if ((rc = glm_ctx_decode(ctx, &vb)) || (rc = glm_ctx_seq_truncate(ctx, 0, SPEC_PROMPT))) goto fail;
            }
            const double ms = 1000.0 * (tool_now() - s0) / R;
            if (w) verify_ms = ms;
            else one_ms = ms;
        }
        glm_ctx_seq_clear(ctx, 0);
    }

    /* the projection: the decode tests again on rank 0's slice alone (its own step, no
     * collectives), plus the modelled collectives of N GPUs */
    int n_proj = 0;
    if (project_only) {      /* the tests above ran on rank 0 alone: they are its own step */
        for (int i = 0; i < nres; i++) {
            result *r = &res[i];
            if (!r->n_seq) continue;
            r->own_ms = r->ms_step;
            r->model_coll_ms = 1000.0 * coll_model_s(&hp, n_tp, r->n_seq, coll_alpha_us * 1e-6, coll_busbw_gbs * 1e9);
            n_proj++;
        }
    } else if (project) {
        glm_ctx_free(ctx);   /* the ranks' memory back before rank 0 alone is made */
        ctx = NULL;
        glm_ctx_params sp = cp;
        sp.tp_solo = 1;
        t0 = tool_now();
        if ((rc = glm_ctx_new(m, &sp, &ctx))) goto fail;
        fprintf(stderr, PROG ": rank 0 of %d alone (projection), ready in %.1f s\n", n_tp, tool_now() - t0);
        for (int i = 0; i < nres; i++) {
            result *r = &res[i];
            if (!r->n_seq) continue;
            const int n = r->n_gen, nb = r->n_seq;
            for (int rep = -1; rep < reps; rep++) {
                for (int s = 0; s < nb; s++) glm_ctx_seq_clear(ctx, s);
                if ((rc = fill_depth(ctx, depth, nb, hp.n_vocab))) goto fail;
                const int steps = rep < 0 ? 2 : n;
                double s0 = tool_now();
                for (int st = 0; st < steps; st++) {
                    for (int s = 0; s < nb; s++) { toks[s] = rand_token(hp.n_vocab); seqs[s] = s; want[s] = 1; }
                    glm_batch b = {nb, toks, seqs, want};
                    if ((rc = glm_ctx_decode(ctx, &b))) goto fail;
                }
                if (rep >= 0) tv[rep] = 1000.0 * (tool_now() - s0) / steps;
            }
            for (int s = 0; s < nb; s++) glm_ctx_seq_clear(ctx, s);
            double sd;
            stats(tv, reps, &r->own_ms, &sd);
            r->model_coll_ms = 1000.0 * coll_model_s(&hp, n_tp, nb, coll_alpha_us * 1e-6, coll_busbw_gbs * 1e9);
            n_proj++;
        }
    }

    /* report */
    const char *desc = glm_model_desc(m);
    const char *dname = dev == GLM_DEVICE_CUDA ? "cuda" : "cpu";
    const char *split = cp.moe_split == GLM_MOE_SPLIT_EP ? "ep" : "tp";
    if (!strcmp(out_fmt, "md")) {
        printf("| model | device | test | t/s | ms/step | floor t/s | of floor | KV |%s\n",
               n_tp > 1 ? " rank bytes/step | coll ms/step |" : "");
        printf("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |%s\n", n_tp > 1 ? " ---: | ---: |" : "");
        for (int i = 0; i < nres; i++) {
            const result *r = &res[i];
            char ms[32] = "", fl[32] = "n/a", fr[32] = "n/a";
            if (r->ms_step > 0) snprintf(ms, sizeof ms, "%.2f", r->ms_step);
            if (r->floor_tps > 0) {
                snprintf(fl, sizeof fl, "%.1f", r->floor_tps);
                snprintf(fr, sizeof fr, "%.1f%%", 100.0 * r->mean / r->floor_tps);
            }
            printf("| %s | %s | %s | %.2f ± %.2f | %s | %s | %s | %.1f%% |", desc, dname, r->name, r->mean, r->sd, ms, fl, fr,
                   100 * r->kv_peak);
            if (n_tp > 1) {
                char rb[32] = "", cm[32] = "";
                if (r->n_seq) {
                    fmt_bytes(rb, sizeof rb, r->rank_bytes);
                    snprintf(cm, sizeof cm, "%.3f", r->coll_ms);
                }
                printf(" %s | %s |", rb, cm);
            }
            printf("\n");
        }
        if (n_proj) {
            printf("\nprojected step of %d GPUs: rank 0's own step (its slice alone) + modelled collectives\n\n", n_tp);
            printf("| model | device | test | own ms/step | modelled coll ms/step | projected ms/step | projected t/s |\n");
            printf("| --- | --- | --- | ---: | ---: | ---: | ---: |\n");
            for (int i = 0; i < nres; i++) {
                const result *r = &res[i];
                if (!r->n_seq) continue;
                const double pm = r->own_ms + r->model_coll_ms;
                printf("| %s | %s | %s projected | %.2f | %.3f | %.2f | %.2f |\n", desc, dname, r->name, r->own_ms,
                       r->model_coll_ms, pm, 1000.0 * r->n_seq / pm);
            }
        }
        for (int i = 0; i < nres; i++)
            if (res[i].draft)
                printf("\n%s: draft %d, acceptance %.3f, mean accepted length %.2f (greedy, random prompt)\n", res[i].name,
                       res[i].draft, res[i].acceptance, res[i].mean_accepted);
        if (verify_ms > 0) {
            /* a draft token costs about the MTP layer's bytes over the step's: one MoE layer,
             * eh_proj and the lm_head against the whole model at batch 1 */
            const double E = hp.n_expert, k = hp.n_expert_used, D = hp.n_embd;
            const double step_b = mc.dense_bytes + mc.n_moe * (E > 0 ? k : 0) * mc.expert_bytes;
            const double layer_b = (step_b - (double)hp.n_vocab * D * 2) / hp.n_layer;
            const double draft_b = layer_b + mat_bytes(D, 2 * D, fmt) + (double)hp.n_vocab * D * 2;
            const double d = draft_b / step_b, nd = spo.n_draft, ratio = verify_ms / one_ms;
            printf("\nverify step of %d tokens: %.3f ms against %.3f ms for one token: %.3fx (one sequence after a "
                   "%d-token prompt, logits for every row)\n", spo.n_draft + 1, verify_ms, one_ms, ratio, SPEC_PROMPT);
            printf("projected single-stream speed with --draft %d (a draft token estimated at %.3f of a one-token step: "
                   "the MTP layer's bytes, one MoE layer + eh_proj + lm_head, over the step's):", spo.n_draft, d);
            for (int ai = 6; ai <= 8; ai++) {
                const double a = ai / 10.0, tokens = (1 - pow(a, nd + 1)) / (1 - a);
                printf("%s acceptance %.1f: %.2f tokens a step, %.2fx", ai > 6 ? ";" : "", a, tokens, tokens / (ratio + nd * d));
            }
            printf(" the one-token step's speed (projected; a synthetic MTP layer accepts next to nothing).\n");
        }
        if (bw > 0 || fp8_rate > 0)
            printf("\ncopy bandwidth %.0f GB/s (read+write); FP8 GEMM %.0f TFLOP/s (cuBLASLt 8192^3). "
                   "Decode floor: weights touched (expected unique experts) + KV read over the bandwidth; "
                   "prefill floor: FLOPs over the FP8 rate.\n", bw / 1e9, fp8_rate / 1e12);
        if (n_tp > 1) {
            printf("\n%d tensor-parallel ranks, routed experts split %s. rank bytes/step: the bytes the busiest rank reads "
                   "a decode step (its slices of attention, dense MLP, shared expert and lm_head, the replicated router and "
                   "embedding rows, %s, its heads' KV cache)%s.\n", n_tp, split,
                   cp.moe_split == GLM_MOE_SPLIT_EP ? "the expected whole experts of the busiest rank (seeded Monte Carlo of "
                   "uniform top-k routing)" : "a 1/N slice of each expected touched expert",
                   bw > 0 ? "; the decode floor is these bytes over the copy bandwidth" : "");
            printf("coll ms/step: %s.\n", coll_meaning(tp_kind));
        }
        if (n_proj)
            printf("projected: measured own step of rank 0's slice alone (collectives skipped, on %s) + modelled "
                   "collectives of %d GPUs: 2 x %d all-reduces of batch x %d x 4 bytes and one all-gather of batch x %d x 4 "
                   "bytes of logits, each %.1f us + bytes / %.0f GB/s x 2(N-1)/N (all-gather: (N-1)/N). Defaults: %s. "
                   "Not a measurement on %d GPUs.\n", dname, n_tp, hp.n_layer, hp.n_embd,
                   (int)ceil((double)hp.n_vocab / n_tp) * n_tp, coll_alpha_us, coll_busbw_gbs, COLL_SOURCE, n_tp);
    } else if (!strcmp(out_fmt, "csv")) {
        printf("model,device,test,n_tokens,tps_mean,tps_sd,ms_step,floor_tps,floor_fraction,floor_bytes_or_flops,copy_gbps,fp8_tflops,"
               "kv_peak%s%s%s\n", spo.n_draft ? ",draft,acceptance,mean_accepted_length" : "",
               n_tp > 1 ? ",rank_bytes_per_step,coll_ms_per_step" : "",
               n_proj ? ",own_ms_per_step,modelled_coll_ms_per_step,projected_ms_per_step,projected_tps" : "");
        for (int i = 0; i < nres; i++) {
            const result *r = &res[i];
            printf("\"%s\",%s,%s,%d,%.4f,%.4f,%.4f,%.4f,%.4f,%.6g,%.1f,%.1f,%.4f", desc, dname, r->name, r->n_tok, r->mean,
                   r->sd, r->ms_step, r->floor_tps, r->floor_tps > 0 ? r->mean / r->floor_tps : 0, r->floor_detail, bw / 1e9,
                   fp8_rate / 1e12, r->kv_peak);
            if (spo.n_draft) printf(",%d,%.4f,%.4f", r->draft, r->acceptance, r->mean_accepted);   /* --draft's columns */
            if (n_tp > 1) {   /* empty on prefill rows */
                if (r->n_seq) printf(",%.0f,%.6f", r->rank_bytes, r->coll_ms);
                else printf(",,");
            }
            if (n_proj) {
                const double pm = r->own_ms + r->model_coll_ms;
                if (r->n_seq) printf(",%.6f,%.6f,%.6f,%.4f", r->own_ms, r->model_coll_ms, pm, 1000.0 * r->n_seq / pm);
                else printf(",,,,");
            }
            printf("\n");
        }
    } else {
        printf("{\n  \"model\": \"%s\",\n  \"device\": \"%s\",\n  \"copy_gbps\": %.1f,\n  \"fp8_tflops\": %.1f,\n",
               desc, dname, bw / 1e9, fp8_rate / 1e12);
        if (n_tp > 1)
            printf("  \"n_tp\": %d,\n  \"moe_split\": \"%s\",\n  \"tp_kind\": \"%s\",\n  \"coll_ms_meaning\": \"%s\",\n", n_tp,
                   split, tp_kind, coll_meaning(tp_kind));
        if (n_proj)
            printf("  \"coll_alpha_us\": %.3f,\n  \"coll_busbw_gbs\": %.3f,\n  \"coll_model_source\": \"%s\",\n",
                   coll_alpha_us, coll_busbw_gbs, COLL_SOURCE);
        printf("  \"tests\": [\n");
        for (int i = 0; i < nres; i++) {
            const result *r = &res[i];
            printf("    {\"test\": \"%s\", \"n_tokens\": %d, \"tps_mean\": %.4f, \"tps_sd\": %.4f, \"ms_step\": %.4f, "
                   "\"floor_tps\": %.4f, \"floor_fraction\": %.4f, \"floor_bytes_or_flops\": %.6g, \"kv_peak\": %.4f",
                   r->name, r->n_tok, r->mean, r->sd, r->ms_step, r->floor_tps,
                   r->floor_tps > 0 ? r->mean / r->floor_tps : 0, r->floor_detail, r->kv_peak);
            if (spo.n_draft)
                printf(", \"draft\": %d, \"acceptance\": %.4f, \"mean_accepted_length\": %.4f", r->draft, r->acceptance, r->mean_accepted);
            if (n_tp > 1 && r->n_seq)
                printf(", \"rank_bytes_per_step\": %.0f, \"coll_ms_per_step\": %.6f", r->rank_bytes, r->coll_ms);
            if (n_proj && r->n_seq) {
                const double pm = r->own_ms + r->model_coll_ms;
                printf(", \"own_ms_per_step\": %.6f, \"modelled_coll_ms_per_step\": %.6f, \"projected_ms_per_step\": %.6f, "
                       "\"projected_tps\": %.4f", r->own_ms, r->model_coll_ms, pm, 1000.0 * r->n_seq / pm);
            }
            printf("}%s\n", i + 1 < nres ? "," : "");
        }
        printf("  ]\n}\n");
    }
    glm_ctx_free(ctx);
    tool_tp_free(&tpo);
    glm_model_free(m);
    free(res); free(tv); free(toks); free(seqs); free(want); free(P); free(N); free(B);
    return EXIT_OK;
fail:
    fprintf(stderr, PROG ": error: %s\n", glm_last_error());
    glm_spec_free(spec);
    glm_ctx_free(ctx);
    tool_tp_free(&tpo);
    glm_model_free(m);
    return EXIT_FAIL;
}
