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
    if (train > 0 && n_ctx > train)
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
    if (!isatty(2) || total == 0) return 0;
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

glm_kv_type tool_kv_type(const char *v) {
    if (strcmp(v, "bf16") == 0) return GLM_KV_BF16;
    if (strcmp(v, "fp8") == 0) return GLM_KV_FP8;
    tool_usage_error("--kv-type expects bf16 or fp8, got '%s'", v);
}

/* ---- tensor parallel flags ---- */
void tool_tp_usage(FILE *f, int width) {
    static const char *const lines[][2] = {
        { "--tp N", "tensor-parallel ranks (default 1), a divisor of the model's KV" },
        { "", "heads; --device cpu: the ranks are threads of this process (-t" },
        { "", "threads shared between them); --device cuda: not implemented yet" },
        { "--moe-split ep|tp", "routed experts over the ranks: ep = whole experts (N must divide" },
        { "", "the experts), tp = a slice of every expert (default tp, until the" },
        { "", "two are measured)" },
        { "--gpus LIST", "CUDA devices, e.g. 0,1,2,3 (one GPU: that GPU; several: not" },
        { "", "implemented yet)" },
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
        fprintf(f, "  %-*s%s\n", width - 2, lines[i][0], lines[i][1]);
}

tool_tp_opts tool_tp_default(void) {
    tool_tp_opts o = { 1, GLM_MOE_SPLIT_TP, NULL, 0 };
    return o;
}

int tool_tp_flag(int argc, char **argv, int *i, tool_tp_opts *o) {
    const char *a = argv[*i];
    if (!strcmp(a, "--tp")) {
        o->n_tp = tool_int(a, tool_arg(argc, argv, i), 1, 64);
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
    } else {
        return 0;
    }
    return 1;
}

int tool_tp_apply(const tool_tp_opts *o, const glm_hparams *hp, glm_ctx_params *cp) {
    const char *prog = tool_name();
    if (o->gpus && cp->device != GLM_DEVICE_CUDA) {
        fprintf(stderr, "%s: error: --gpus selects the GPUs of --device cuda; with --device cpu the ranks are threads\n", prog);
        return EXIT_USAGE;
    }
    if (hp->n_head_kv % o->n_tp) {
        fprintf(stderr, "%s: error: --tp %d does not divide the model's %d KV heads (replicating KV heads is not built)\n",
                prog, o->n_tp, hp->n_head_kv);
        return EXIT_USAGE;
    }
    if (o->moe_split == GLM_MOE_SPLIT_EP && hp->n_expert % o->n_tp) {
        fprintf(stderr, "%s: error: --moe-split ep: --tp %d does not divide the model's %d routed experts (use --moe-split tp)\n",
                prog, o->n_tp, hp->n_expert);
        return EXIT_USAGE;
    }
    if (cp->device == GLM_DEVICE_CUDA && (o->n_tp > 1 || o->n_gpus > 1)) {
        fprintf(stderr, "%s: error: %s on CUDA is not implemented yet (the sharded forward runs with --device cpu; "
                "docs/PARALLEL.md)\n", prog, o->n_tp > 1 ? "--tp" : "--gpus with several GPUs");
        return EXIT_FAIL;
    }
    if (o->n_gpus == 1) cp->gpu = o->gpus[0];
    cp->n_tp = o->n_tp;
    cp->moe_split = o->moe_split;
    if (o->n_tp > 1)
        fprintf(stderr, "%s: %d tensor-parallel ranks as threads, routed experts split %s\n", prog, o->n_tp,
                o->moe_split == GLM_MOE_SPLIT_EP ? "ep (whole experts)" : "tp (a slice of every expert)");
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
               "  %-*s (default 0 = off until a trained MTP layer is measured; max %d; CPU only)\n"
               "  %-*s never load the MTP layer (loads as a checkpoint without it)\n",
            width - 2, "--draft N", width - 2, "", GLM_SPEC_MAX_DRAFT, width - 2, "--no-mtp");
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
    if (cp->device == GLM_DEVICE_CUDA) {
        fprintf(stderr, "%s: error: --draft on CUDA: not implemented (speculative decoding runs on the CPU: --device cpu)\n", prog);
        return EXIT_FAIL;
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
