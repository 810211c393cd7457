/* common.c - helpers shared by the command-line tools (see common.h). */
#include "common.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *prog_name;
static int tp_quiet;  /* a --dist-init process of a rank other than 0 (tool_tp_quiet) */

void tool_init(const char *prog) {
    const char *slash = prog ? strrchr(prog, '/') : NULL;
    prog_name = slash ? slash + 1 : prog;
}

const char *tool_name(void) {
    return prog_name && *prog_name ? prog_name : program_invocation_short_name;
}

void tool_usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: error: ", tool_name());
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(EXIT_USAGE);
}

static volatile sig_atomic_t sigint_count;

/* The first SIGINT asks the tool to stop; the second ends the process at once. */
static void on_sigint(int sig) {
    (void)sig;
    if (sigint_count++) _exit(EXIT_INTERRUPTED);
}

void tool_catch_sigint(void) {
    struct sigaction sa;
    if (sigaction(SIGINT, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN) return; /* a background job keeps ignoring it */
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL); /* no SA_RESTART: a blocking read returns EINTR */
}

int tool_interrupted(void) { return sigint_count != 0; }
void tool_clear_interrupt(void) { sigint_count = 0; }

void tool_warn_ctx(const char *prog, int n_ctx, const glm_model *m) {
    int train = glm_model_hparams(m)->n_ctx_train;
    if (train > 0 && n_ctx > train && !tp_quiet)
        fprintf(stderr, "%s: warning: context size %d is past the model's trained context (%d tokens); "
                "output beyond %d tokens may degrade\n", prog, n_ctx, train, train);
}

double tool_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int tool_parse_ids(const char *s, int32_t **ids, int *n, char *err, size_t err_len) {
    int cap = 64, k = 0;
    int32_t *v = malloc(sizeof *v * (size_t)cap);
    if (!v) { snprintf(err, err_len, "out of memory"); return -1; }
    const char *p = s;
    while (*p) {
        if (*p == ',' || *p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '[' || *p == ']') { p++; continue; }
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < 0 || x > INT32_MAX) {
            snprintf(err, err_len, "not a token id at byte %ld: '%.12s'", (long)(p - s), p);
            free(v);
            return -1;
        }
        if (k == cap) {
            cap *= 2;
            int32_t *nv = realloc(v, sizeof *v * (size_t)cap);
            if (!nv) { free(v); snprintf(err, err_len, "out of memory"); return -1; }
            v = nv;
        }
        v[k++] = (int32_t)x;
        p = end;
    }
    *ids = v;
    *n = k;
    return 0;
}

int tool_parse_int_list(const char *s, int **vals, int *n) {
    int32_t *ids;
    char err[128];
    if (tool_parse_ids(s, &ids, n, err, sizeof err)) return -1;
    *vals = (int *)ids;
    return 0;
}

int tool_int(const char *flag, const char *v, long lo, long hi) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > hi)
        tool_usage_error("%s expects an integer in [%ld, %ld], got '%s'", flag, lo, hi, v);
    return (int)x;
}

float tool_float(const char *flag, const char *v) {
    char *end;
    errno = 0;
    float x = strtof(v, &end);
    if (!*v || *end || errno || !isfinite(x)) tool_usage_error("%s expects a number, got '%s'", flag, v);
    return x;
}

float tool_float_in(const char *flag, const char *v, char lb, double lo, double hi, char rb) {
    float x = tool_float(flag, v);
    if ((lb == '(' ? x <= lo : x < lo) || (rb == ')' ? x >= hi : x > hi))
        tool_usage_error("%s expects a number in %c%g, %g%c, got '%s'", flag, lb, lo, hi, rb, v);
    return x;
}

const char *tool_arg(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) tool_usage_error("%s needs a value (see --help)", argv[*i]);
    return argv[++*i];
}

const char *tool_default_model(void) {
    static char buf[4096];
    const char *env = getenv("GLM_MODEL");
    if (env && *env) return env;
    /* <repo>/build/bin/glm-x -> <repo>/models/glm-tiny */
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 64);
    if (n > 0) {
        buf[n] = 0;
        for (int up = 0; up < 3; up++) {
            char *slash = strrchr(buf, '/');
            if (!slash) break;
            *slash = 0;
        }
        strcat(buf, "/models/glm-tiny");
        if (access(buf, F_OK) == 0) return buf;
    }
    return "models/glm-tiny";
}

int tool_progress(uint64_t done, uint64_t total, void *user) {
    (void)user;
    if (tool_interrupted()) return 1;
    if (tp_quiet || !isatty(2) || total == 0) return 0;
    int w = 40, fill = (int)(w * (double)done / (double)total);
    fprintf(stderr, "\rloading [%.*s%*s] %5.1f%% %.2f/%.2f GB", fill, "########################################", w - fill, "",
            100.0 * (double)done / (double)total, done / 1e9, total / 1e9);
    if (done >= total) fputc('\n', stderr);
    return 0;
}

glm_model *tool_load_model(const char *prog, const char *dir) {
    const tool_spec_opts none = {0};  /* the MTP layer bound when the checkpoint has it whole */
    return tool_load_model_spec(prog, dir, &none);
}

char *tool_read_text(const char *prog, const char *path, size_t *len) {
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) { fprintf(stderr, "%s: error: %s: %s\n", prog, path, strerror(errno)); return NULL; }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        if (n == cap) {
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        if (r == 0) break;
        n += r;
    }
    int bad = ferror(f);
    if (f != stdin) fclose(f);
    if (!buf || bad) { free(buf); fprintf(stderr, "%s: error: %s: read failed\n", prog, path); return NULL; }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

glm_device tool_device(const char *v) {
    if (strcmp(v, "cpu") == 0) return GLM_DEVICE_CPU;
    if (strcmp(v, "cuda") == 0 || strcmp(v, "gpu") == 0) return GLM_DEVICE_CUDA;
    tool_usage_error("--device expects cpu or cuda, got '%s'", v);
}

glm_device tool_default_device(void) {
    return glm_cuda_available() ? GLM_DEVICE_CUDA : GLM_DEVICE_CPU;
}

/* Measured (docs/PERF.md run 19, H200, 64 requests of 128 + 128 tokens on the 13-layer
 * GLM-4.7 slice): 512-token steps gave 3,538 output tok/s, 2,048 4,056-4,217, 8,192
 * 4,306-4,516 with the shortest time to first token (the prompts in one prefill at the
 * GPU's prefill rate). The CPU prefills slowly: a small budget keeps its running
 * streams moving. */
int tool_default_batch_tokens(glm_device dev) { return dev == GLM_DEVICE_CUDA ? 8192 : 512; }

glm_kv_type tool_kv_type(const char *v) {
    if (strcmp(v, "bf16") == 0) return GLM_KV_BF16;
    if (strcmp(v, "fp8") == 0) return GLM_KV_FP8;
    tool_usage_error("--kv-type expects bf16 or fp8, got '%s'", v);
}

/* ---- tensor parallel flags ---- */
void tool_tp_usage(FILE *f, int width) {
    static const char *const lines[][2] = {
        { "--tp N", "tensor-parallel ranks (default 1; on CUDA without --tp: the fewest" },
        { "", "of 1, 2, 4, 8 GPUs whose free memory holds the model), a divisor of" },
        { "", "the model's KV heads; --device cpu: the ranks are threads of this" },
        { "", "process (-t threads shared between them); --device cuda: one GPU a" },
        { "", "rank, summing through NCCL; fewer GPUs than ranks: they share the" },
        { "", "GPUs (shared-GPU mode, sums through host memory: a test and" },
        { "", "projection mode, not the speed of N GPUs)" },
        { "--moe-split ep|tp", "routed experts over the ranks: ep = whole experts (N must divide" },
        { "", "the experts), tp = a slice of every expert (default ep where the" },
        { "", "ranks divide the experts, else tp: measured faster on the" },
        { "", "GLM-4.7 slice, docs/PARALLEL.md)" },
        { "--gpus LIST", "CUDA devices of the ranks, e.g. 0,1,2,3: rank r on entry r mod" },
        { "", "their count (default: all visible GPUs, CUDA_VISIBLE_DEVICES" },
        { "", "respected)" },
        { "--dist-init SPEC", "one process a rank (--device cuda): file:PATH (a shared file" },
        { "", "system) or tcp:HOST:PORT (rank 0's address); RANK, WORLD_SIZE and" },
        { "", "LOCAL_RANK (the GPU) from the environment; --tp is WORLD_SIZE; only" },
        { "", "rank 0 writes output" },
    };
    const int dist = strcmp(tool_name(), "glm-server") != 0;  /* the server runs its ranks in one process */
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        if (!dist && !strncmp(lines[i][0], "--dist-init", 11)) break;  /* its lines come last */
        fprintf(f, "  %-*s%s\n", width - 2, lines[i][0], lines[i][1]);
    }
}

tool_tp_opts tool_tp_default(void) {
    tool_tp_opts o = { 1, 0, -1, NULL, 0, NULL, 0, 1, 0 };
    return o;
}

int tool_tp_quiet(void) { return tp_quiet; }

int tool_tp_flag(int argc, char **argv, int *i, tool_tp_opts *o) {
    const char *a = argv[*i];
    if (!strcmp(a, "--tp")) {
        o->n_tp = tool_int(a, tool_arg(argc, argv, i), 1, 64);
        o->tp_set = 1;
    } else if (!strcmp(a, "--moe-split")) {
        const char *v = tool_arg(argc, argv, i);
        if (!strcmp(v, "ep")) o->moe_split = GLM_MOE_SPLIT_EP;
        else if (!strcmp(v, "tp")) o->moe_split = GLM_MOE_SPLIT_TP;
        else tool_usage_error("--moe-split expects ep or tp, got '%s'", v);
    } else if (!strcmp(a, "--gpus")) {
        const char *v = tool_arg(argc, argv, i);
        free(o->gpus);
        o->gpus = NULL;
        if (tool_parse_int_list(v, &o->gpus, &o->n_gpus) || o->n_gpus < 1 || o->n_gpus > 64)
            tool_usage_error("--gpus expects a list of 1 to 64 GPU indices such as 0,1,2,3, got '%s'", v);
    } else if (!strcmp(a, "--dist-init")) {
        const char *v = tool_arg(argc, argv, i);
        if (glm_dist_spec_check(v) != GLM_OK)
            tool_usage_error("--dist-init expects file:PATH or tcp:HOST:PORT, got '%s': %s", v, glm_last_error());
        if (glm_dist_env(&o->rank, &o->world_size, &o->local_rank) != GLM_OK)
            tool_usage_error("--dist-init: %s", glm_last_error());
        o->dist_init = v;
        tp_quiet = o->rank != 0;
    } else {
        return 0;
    }
    return 1;
}

int tool_tp_check(const tool_tp_opts *o, glm_device dev) {
    const char *prog = tool_name();
    if (o->dist_init && dev != GLM_DEVICE_CUDA) {
        fprintf(stderr, "%s: error: --dist-init (one process a rank) needs --device cuda; with --device cpu the ranks are "
                "threads of one process (--tp N)\n", prog);
        return EXIT_USAGE;
    }
    if (o->dist_init && o->tp_set && o->n_tp != o->world_size) {
        fprintf(stderr, "%s: error: --tp %d differs from WORLD_SIZE %d (with --dist-init each process is one rank; "
                "leave --tp out)\n", prog, o->n_tp, o->world_size);
        return EXIT_USAGE;
    }
    return 0;
}

/* "0,1,2,3" of n GPU indices into buf. */
static const char *gpu_list_str(const int *g, int n, char *buf, size_t len) {
    size_t k = 0;
    buf[0] = 0;
    for (int i = 0; i < n && k + 16 < len; i++) k += (size_t)snprintf(buf + k, len - k, "%s%d", i ? "," : "", g[i]);
    return buf;
}

static const char *split_name(int split) {
    return split == GLM_MOE_SPLIT_EP ? "ep (whole experts)" : "tp (a slice of every expert)";
}

/* The GPU list a context points to: kept here, so that it outlives the tool's options. */
static int tp_gpus[64];

/* The fewest of 1, 2, 4, 8 GPUs (of the distinct ones in g[n]) whose free memory holds
 * the model's weights split that many ways, with 10% and 2 GiB for activations and a
 * KV cache; 0 when none does. *need: the bytes a GPU needs at that count. */
static int tp_auto_count(const glm_model *m, const glm_hparams *hp, int split, const int *g, int n, uint64_t *need) {
    const uint64_t bytes = glm_model_n_bytes(m);
    for (int k = 1; k <= 8 && k <= n; k *= 2) {
        if (hp->n_head_kv % k || (split == GLM_MOE_SPLIT_EP && hp->n_expert % k)) continue;
        const uint64_t per = bytes / (uint64_t)k;
        *need = per + per / 10 + (2ull << 30);
        int fits = 1;
        for (int i = 0; i < k && fits; i++) {
            uint64_t fr = 0, tot = 0;
            fits = glm_cuda_mem_info(g[i], &fr, &tot) == GLM_OK && fr >= *need;
        }
        if (fits) return k;
    }
    return 0;
}

/* The split of the routed experts over n ranks: --moe-split, else ep where n divides the
 * experts (measured faster at batch 64 and within 15% at batch 1: docs/PARALLEL.md), tp
 * otherwise. */
static int split_for(const tool_tp_opts *o, const glm_hparams *hp, int n) {
    if (o->moe_split >= 0) return o->moe_split;
    return n > 1 && hp->n_expert > 0 && hp->n_expert % n == 0 ? GLM_MOE_SPLIT_EP : GLM_MOE_SPLIT_TP;
}

int tool_tp_apply(const tool_tp_opts *o, const glm_model *m, glm_ctx_params *cp) {
    const char *prog = tool_name();
    const glm_hparams *hp = glm_model_hparams(m);
    int rc = tool_tp_check(o, cp->device);
    if (rc) return rc;
    if (o->gpus && cp->device != GLM_DEVICE_CUDA) {
        fprintf(stderr, "%s: error: --gpus selects the GPUs of --device cuda; with --device cpu the ranks are threads\n", prog);
        return EXIT_USAGE;
    }
    const int n_tp = o->dist_init ? o->world_size : o->n_tp;
    const char *tp_flag = o->dist_init ? "WORLD_SIZE" : "--tp";
    if (hp->n_head_kv % n_tp) {
        fprintf(stderr, "%s: error: %s %d does not divide the model's %d KV heads (replicating KV heads is not built)\n",
                prog, tp_flag, n_tp, hp->n_head_kv);
        return EXIT_USAGE;
    }
    if (o->moe_split == GLM_MOE_SPLIT_EP && hp->n_expert % n_tp) {
        fprintf(stderr, "%s: error: --moe-split ep: %s %d does not divide the model's %d routed experts (use --moe-split tp)\n",
                prog, tp_flag, n_tp, hp->n_expert);
        return EXIT_USAGE;
    }
    cp->n_tp = n_tp;
    cp->moe_split = split_for(o, hp, n_tp);
    cp->dist_init = o->dist_init;
    if (cp->device == GLM_DEVICE_CUDA) cp->progress = tool_progress;  /* the weights going onto the GPUs */
    if (cp->device != GLM_DEVICE_CUDA) {
        if (n_tp > 1)
            fprintf(stderr, "%s: %d tensor-parallel ranks as threads, routed experts split %s\n", prog, n_tp,
                    split_name(cp->moe_split));
        return 0;
    }

    /* CUDA: the GPUs present, the effective list (--gpus, else all of them) */
    const int count = glm_cuda_device_count();
    if (count < 1) {
        if (!(n_tp > 1 || o->gpus || o->dist_init)) return 0;  /* one GPU: the context names the failure */
        fprintf(stderr, "%s: error: --device cuda: no CUDA device%s\n", prog,
#ifdef GLM_CUDA
                ""
#else
                " (this build has no CUDA backend; use --device cpu)"
#endif
        );
        return EXIT_FAIL;
    }
    int n_list = 0;
    if (o->gpus) {
        for (int i = 0; i < o->n_gpus; i++) {
            if (o->gpus[i] < 0 || o->gpus[i] >= count) {
                fprintf(stderr, "%s: error: --gpus: GPU %d is not present (%d visible: 0 to %d; CUDA_VISIBLE_DEVICES "
                        "renumbers them from 0)\n", prog, o->gpus[i], count, count - 1);
                return EXIT_USAGE;
            }
            tp_gpus[n_list++] = o->gpus[i];
        }
    } else {
        for (int g = 0; g < count && g < 64; g++) tp_gpus[n_list++] = g;
    }
    char list[64 * 12];

    if (o->dist_init) {
        const int gpu = tp_gpus[o->local_rank % n_list];
        if (!o->gpus && o->local_rank >= count) {
            fprintf(stderr, "%s: error: LOCAL_RANK %d: no such GPU (%d visible: 0 to %d)\n", prog, o->local_rank, count,
                    count - 1);
            return EXIT_USAGE;
        }
        cp->gpu = gpu;
        if (o->gpus) { cp->gpus = tp_gpus; cp->n_gpus = n_list; }
        if (!tp_quiet)
            fprintf(stderr, "%s: %d tensor-parallel ranks, one process each (--dist-init %s): rank %d on GPU %d; routed "
                    "experts split %s\n", prog, n_tp, o->dist_init, o->rank, gpu, split_name(cp->moe_split));
        return 0;
    }

    if (!o->tp_set) {
        /* the fewest GPUs that hold the model, each of them once */
        int uniq[64], n_uniq = 0;
        for (int i = 0; i < n_list; i++) {
            int seen = 0;
            for (int j = 0; j < n_uniq; j++) seen |= uniq[j] == tp_gpus[i];
            if (!seen) uniq[n_uniq++] = tp_gpus[i];
        }
        uint64_t need = 0;
        const int k = tp_auto_count(m, hp, o->moe_split, uniq, n_uniq, &need);
        if (k > 1) {
            memcpy(tp_gpus, uniq, sizeof(int) * (size_t)k);
            cp->n_tp = k;
            cp->moe_split = split_for(o, hp, k);
            cp->gpus = tp_gpus;
            cp->n_gpus = k;
            fprintf(stderr, "%s: the model needs %d GPUs (%.1f GiB a GPU); running --tp %d on GPUs %s; routed experts "
                    "split %s\n", prog, k, need / 1073741824.0, k, gpu_list_str(tp_gpus, k, list, sizeof list),
                    split_name(cp->moe_split));
            return 0;
        }
        cp->gpu = uniq[0];  /* one GPU, or none holds it: the context's load check names the figures */
        return 0;
    }
    if (n_tp <= 1) {
        cp->gpu = tp_gpus[0];
        return 0;
    }
    if (o->gpus) { cp->gpus = tp_gpus; cp->n_gpus = n_list; }
    /* the GPU of each rank, and the distinct ones in rank order */
    int used[64], n_used = 0;
    for (int r = 0; r < n_tp; r++) {
        const int g = tp_gpus[r % n_list];
        int seen = 0;
        for (int j = 0; j < n_used; j++) seen |= used[j] == g;
        if (!seen) used[n_used++] = g;
    }
    fprintf(stderr, "%s: %d tensor-parallel ranks on GPU%s %s; routed experts split %s\n", prog, n_tp, n_used == 1 ? "" : "s",
            gpu_list_str(used, n_used, list, sizeof list), split_name(cp->moe_split));
    if (n_used < n_tp)
        fprintf(stderr, "%s: shared-GPU mode: %d ranks on %d GPU%s, sums through host memory: a test and projection mode, "
                "not the speed of %d GPUs\n", prog, n_tp, n_used, n_used == 1 ? "" : "s", n_tp);
    return 0;
}

void tool_tp_free(tool_tp_opts *o) {
    free(o->gpus);
    o->gpus = NULL;
    o->n_gpus = 0;
}

/* ---- speculative decoding ---- */

void tool_spec_usage(FILE *f, int width) {
    fprintf(f, "  %-*s tokens the model's MTP layer drafts a step, verified in one forward\n"
               "  %-*s (default 0 = off until a trained MTP layer is measured; max %d; one rank)\n"
               "  %-*s never load the MTP layer (loads as a checkpoint without it)\n",
            width - 3, "--draft N", width - 3, "", GLM_SPEC_MAX_DRAFT, width - 3, "--no-mtp");
}

int tool_spec_flag(int argc, char **argv, int *i, tool_spec_opts *o) {
    const char *a = argv[*i];
    if (!strcmp(a, "--draft")) { o->n_draft = tool_int(a, tool_arg(argc, argv, i), 0, GLM_SPEC_MAX_DRAFT); return 1; }
    if (!strcmp(a, "--no-mtp")) { o->no_mtp = 1; return 1; }
    return 0;
}

int tool_spec_apply(const char *prog, const tool_spec_opts *o, glm_ctx_params *cp) {
    cp->mtp = o->n_draft > 0;
    if (!o->n_draft) return 0;
    if (o->no_mtp) {
        fprintf(stderr, "%s: error: --draft %d needs the MTP layer: not with --no-mtp\n", prog, o->n_draft);
        return EXIT_USAGE;
    }
    return 0;
}

glm_model *tool_load_model_spec(const char *prog, const char *dir, const tool_spec_opts *o) {
    glm_model_params mp = glm_model_default_params();
    mp.progress = tool_progress;
    mp.mtp = o->no_mtp ? GLM_MTP_OFF : o->n_draft > 0 ? GLM_MTP_REQUIRE : GLM_MTP_AUTO;
    glm_model *m = NULL;
    if (glm_model_load(dir, &mp, &m) != GLM_OK) {
        fprintf(stderr, "%s: error: cannot load model: %s%s\n", prog, glm_last_error(),
                mp.mtp == GLM_MTP_REQUIRE ? " (--draft needs the MTP layer)" : "");
        return NULL;
    }
    return m;
}
