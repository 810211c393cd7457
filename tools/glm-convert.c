/* glm-convert - writes GLM-4 MoE checkpoints: random-weight synthetic ones in the
 * real GLM-4.7-FP8 layout (for benchmarks and tests without downloaded weights), and
 * BF16 -> FP8 (per-channel or block-128) conversion of a Hugging Face directory.
 * Every output is written into a fresh temporary folder beside --out and renamed into
 * place at the end, so a failure or an interrupt leaves no partial output, and an
 * existing checkpoint is never mixed with the new one. */
#include "common.h"
#include "convert.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void usage(FILE *f) {
    fprintf(f,
        "usage: glm-convert -m BF16_DIR [--format fp8-channel|fp8-block] [-t N] [--force] --out DIR\n"
        "       glm-convert --synthetic --preset tiny|glm-4.7 [--layers L] [--vocab V] [--format F] [--seed S] [--force] --out DIR\n"
        "\n"
        "Writes a Glm4MoeForCausalLM checkpoint: config.json, safetensors shards and\n"
        "model.safetensors.index.json (a conversion also copies tokenizer.json,\n"
        "tokenizer_config.json, generation_config.json and chat_template.jinja when present).\n"
        "The output is built in a temporary folder beside DIR and renamed to DIR at the end;\n"
        "on an error or an interrupt the temporary folder is removed. Input files are only read.\n"
        "\n"
        "  -m, --model DIR    convert a BF16 checkpoint: every attention/MLP/expert Linear becomes FP8\n"
        "                     (the router, embeddings, norms, biases and lm_head are copied)\n"
        "  --synthetic        random weights in the real layout (nothing to download)\n"
        "  --preset NAME      tiny (1.3M params) or glm-4.7 (full width: hidden 5120, 160 experts)\n"
        "  --layers L         number of layers (glm-4.7: the first 3 are dense)\n"
        "  --vocab V          vocabulary size of a synthetic model (default: the preset's; its\n"
        "                     end-of-sequence ids move below V)\n"
        "  --format F         fp8-channel (GLM-4.7-FP8, default), fp8-block (128x128 blocks),\n"
        "                     or bf16 (--synthetic only)\n"
        "  --seed S           random seed of --synthetic (default 1)\n"
        "  -t, --threads N    threads for a conversion (default: every core)\n"
        "  --shard-mb N       largest output shard of a conversion, in MB (default 5000)\n"
        "  -o, --out DIR      output folder: created, or an empty folder; never the input\n"
        "  --force            replace DIR when it is not empty (the old folder is removed\n"
        "                     once the new one is in place)\n"
        "  -h, --help         this text\n"
        "\n"
        "Progress goes to stderr as a bar on a terminal. Exit status: 0 done, 1 failure\n"
        "(nothing is left at DIR's place), 2 usage error (also: DIR is or contains the input,\n"
        "or is not empty without --force), 130 interrupted.\n");
}

static int parse_format(const char *v, glm_weight_format *f) {
    if (strcmp(v, "fp8-channel") == 0 || strcmp(v, "fp8") == 0) *f = GLM_FMT_FP8_CHANNEL;
    else if (strcmp(v, "fp8-block") == 0) *f = GLM_FMT_FP8_BLOCK;
    else if (strcmp(v, "bf16") == 0) *f = GLM_FMT_BF16;
    else return -1;
    return 0;
}

/* ---- interrupts and progress ---- */

static volatile sig_atomic_t got_signal;

static void on_signal(int sig) {
    got_signal = sig;
    signal(sig, SIG_DFL); /* a second one ends the program at once */
}

typedef struct {
    const char *what;        /* "converting" or "writing" */
    double t0;
    uint64_t total;
    int tty;
} progress_state;

/* Draws the progress bar on a terminal; returns non-zero (cancel) after a signal. */
static int progress(uint64_t done, uint64_t total, void *user) {
    progress_state *p = user;
    p->total = total;
    if (got_signal) return 1;
    if (!p->tty || total == 0) return 0;
    double dt = tool_now() - p->t0, frac = (double)done / (double)total;
    int w = 40, fill = (int)(w * frac);
    fprintf(stderr, "\r%s [%.*s%*s] %5.1f%% %.2f/%.2f GB %6.0f MB/s", p->what, fill,
            "########################################", w - fill, "", 100.0 * frac, done / 1e9, total / 1e9,
            dt > 0 ? done / 1e6 / dt : 0.0);
    if (done >= total) fputc('\n', stderr);
    return 0;
}

/* ---- the output folder ---- */

typedef struct {
    char path[PATH_MAX];     /* the resolved output folder */
    char parent[PATH_MAX];   /* its parent, where the temporary folders go */
    char base[NAME_MAX + 1];
    char tmp[PATH_MAX + 64]; /* the folder being written, "" when none */
    int exists, empty;
} out_dir;

static int rm_entry(const char *path, const struct stat *sb, int type, struct FTW *ftw) {
    (void)sb; (void)type; (void)ftw;
    return remove(path) != 0 && errno != ENOENT ? -1 : 0;
}

/* Removes a folder and everything in it; returns 0 or -1. */
static int remove_tree(const char *path) { return nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

/* Returns 1 when real path p is dir itself or lies inside it. */
static int path_within(const char *p, const char *dir) {
    size_t n = strlen(dir);
    if (strcmp(dir, "/") == 0) return 1;
    return strncmp(p, dir, n) == 0 && (p[n] == 0 || p[n] == '/');
}

/* Resolves --out and checks it against the input and --force; returns an exit code. */
static int check_out(const char *out, const char *in, int force, out_dir *o) {
    struct stat so, si;
    memset(o, 0, sizeof *o);
    if (!*out) { fprintf(stderr, "glm-convert: error: --out is empty\n"); return EXIT_USAGE; }
    if (stat(out, &so) == 0) {
        if (!S_ISDIR(so.st_mode)) { fprintf(stderr, "glm-convert: error: --out %s exists and is not a folder\n", out); return EXIT_USAGE; }
        if (!realpath(out, o->path)) { fprintf(stderr, "glm-convert: error: %s: %s\n", out, strerror(errno)); return EXIT_FAIL; }
        if (in && stat(in, &si) == 0 && si.st_dev == so.st_dev && si.st_ino == so.st_ino) {
            fprintf(stderr, "glm-convert: error: --out %s is the input folder %s; write to another folder\n", out, in);
            return EXIT_USAGE;
        }
        o->exists = 1;
        DIR *d = opendir(out);
        if (!d) { fprintf(stderr, "glm-convert: error: %s: %s\n", out, strerror(errno)); return EXIT_FAIL; }
        struct dirent *e;
        o->empty = 1;
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) { o->empty = 0; break; }
        closedir(d);
        if (!o->empty && !force) {
            fprintf(stderr, "glm-convert: error: --out %s is not empty; give --force to replace it\n", out);
            return EXIT_USAGE;
        }
    } else {
        /* a new folder: its parent must exist */
        char buf[PATH_MAX];
        snprintf(buf, sizeof buf, "%s", out);
        size_t n = strlen(buf);
        while (n > 1 && buf[n - 1] == '/') buf[--n] = 0;
        char *slash = strrchr(buf, '/');
        const char *name = slash ? slash + 1 : buf;
        char parent[PATH_MAX];
        snprintf(parent, sizeof parent, "%s", slash ? (slash == buf ? "/" : buf) : ".");
        if (slash && slash != buf) parent[slash - buf] = 0;
        if (!*name || !strcmp(name, ".") || !strcmp(name, "..")) { fprintf(stderr, "glm-convert: error: --out %s: not a folder name\n", out); return EXIT_USAGE; }
        char real_parent[PATH_MAX];
        if (!realpath(parent, real_parent)) {
            fprintf(stderr, "glm-convert: error: --out %s: parent folder %s: %s\n", out, parent, strerror(errno));
            return EXIT_FAIL;
        }
        if (snprintf(o->path, sizeof o->path, "%s%s%s", real_parent, strcmp(real_parent, "/") ? "/" : "", name) >= (int)sizeof o->path) {
            fprintf(stderr, "glm-convert: error: --out %s: path too long\n", out);
            return EXIT_USAGE;
        }
    }
    if (strcmp(o->path, "/") == 0) { fprintf(stderr, "glm-convert: error: --out / is not allowed\n"); return EXIT_USAGE; }
    char *slash = strrchr(o->path, '/');
    snprintf(o->base, sizeof o->base, "%s", slash + 1);
    snprintf(o->parent, sizeof o->parent, "%.*s", slash == o->path ? 1 : (int)(slash - o->path), o->path);
    if (in) {
        /* --force must never remove the input: refuse an output that holds it or any of its files */
        char real_in[PATH_MAX], p[PATH_MAX], rp[PATH_MAX];
        if (!realpath(in, real_in)) { fprintf(stderr, "glm-convert: error: %s: %s\n", in, strerror(errno)); return EXIT_FAIL; }
        if (path_within(real_in, o->path)) {
            fprintf(stderr, "glm-convert: error: --out %s is or contains the input folder %s\n", out, in);
            return EXIT_USAGE;
        }
        DIR *d = opendir(in);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            if (snprintf(p, sizeof p, "%s/%s", real_in, e->d_name) >= (int)sizeof p) continue;
            if (realpath(p, rp) && path_within(rp, o->path)) {
                fprintf(stderr, "glm-convert: error: input file %s lies inside --out %s\n", p, out);
                closedir(d);
                return EXIT_USAGE;
            }
        }
        if (d) closedir(d);
    }
    return EXIT_OK;
}

/* Creates the temporary folder beside the output; returns an exit code. */
static int make_tmp(out_dir *o) {
    if (snprintf(o->tmp, sizeof o->tmp, "%s/.%s.tmp-XXXXXX", o->parent, o->base) >= (int)sizeof o->tmp) errno = ENAMETOOLONG;
    else if (mkdtemp(o->tmp)) errno = 0;
    if (errno) {
        fprintf(stderr, "glm-convert: error: cannot create a folder in %s: %s\n", o->parent, strerror(errno));
        o->tmp[0] = 0;
        return EXIT_FAIL;
    }
    mode_t mask = umask(0);
    umask(mask);
    chmod(o->tmp, 0777 & ~mask);
    return EXIT_OK;
}

/* Removes the temporary folder (after a failure). */
static void drop_tmp(out_dir *o) {
    if (o->tmp[0] && remove_tree(o->tmp) != 0)
        fprintf(stderr, "glm-convert: warning: could not remove %s: %s\n", o->tmp, strerror(errno));
    o->tmp[0] = 0;
}

/* Moves the finished temporary folder to the output's place (the old one, with --force,
 * aside first and removed after); returns an exit code. */
static int place(out_dir *o) {
    char old[PATH_MAX + 64] = "";
    if (o->exists && !o->empty) {
        int n = snprintf(old, sizeof old, "%s/.%s.old-XXXXXX", o->parent, o->base);
        if (n >= (int)sizeof old) errno = ENAMETOOLONG;
        if (n >= (int)sizeof old || !mkdtemp(old) || rename(o->path, old) != 0) {
            fprintf(stderr, "glm-convert: error: cannot move %s aside: %s\n", o->path, strerror(errno));
            if (old[0] && old[strlen(old) - 1] != 'X') rmdir(old);
            drop_tmp(o);
            return EXIT_FAIL;
        }
    }
    if (rename(o->tmp, o->path) != 0) {
        fprintf(stderr, "glm-convert: error: cannot rename %s to %s: %s\n", o->tmp, o->path, strerror(errno));
        if (old[0] && rename(old, o->path) != 0)
            fprintf(stderr, "glm-convert: error: the old %s is now %s\n", o->path, old);
        drop_tmp(o);
        return EXIT_FAIL;
    }
    o->tmp[0] = 0;
    int fd = open(o->parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) { fsync(fd); close(fd); }
    if (old[0] && remove_tree(old) != 0)
        fprintf(stderr, "glm-convert: warning: could not remove the old checkpoint %s: %s\n", old, strerror(errno));
    return EXIT_OK;
}

/* Reports a failed write: removes the temporary folder; returns the exit code. */
static int failed(out_dir *o, const char *what) {
    int sig = got_signal;
    if (sig) fprintf(stderr, "%sglm-convert: interrupted; removing %s\n", isatty(2) ? "\n" : "", o->tmp);
    else fprintf(stderr, "%sglm-convert: error: %s\nglm-convert: nothing written to %s\n", isatty(2) ? "\n" : "", what, o->path);
    drop_tmp(o);
    return sig ? 130 : EXIT_FAIL;
}

int main(int argc, char **argv) {
    const char *preset = NULL, *out = NULL, *in = NULL, *fmt_name = "fp8-channel";
    int synthetic = 0, layers = 0, vocab = 0, threads = 0, force = 0, shard_mb = 5000;
    uint64_t seed = 1;
    glm_weight_format fmt = GLM_FMT_FP8_CHANNEL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return EXIT_OK; }
        else if (!strcmp(a, "--synthetic")) synthetic = 1;
        else if (!strcmp(a, "--force")) force = 1;
        else if (!strcmp(a, "--preset")) preset = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "--layers")) layers = tool_int(a, tool_arg(argc, argv, &i), 1, 1000);
        else if (!strcmp(a, "--vocab")) vocab = tool_int(a, tool_arg(argc, argv, &i), 1, 10000000);
        else if (!strcmp(a, "--seed")) seed = (uint64_t)tool_int(a, tool_arg(argc, argv, &i), 0, 2147483647);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) threads = tool_int(a, tool_arg(argc, argv, &i), 1, 4096);
        else if (!strcmp(a, "--shard-mb")) shard_mb = tool_int(a, tool_arg(argc, argv, &i), 1, 1000000);
        else if (!strcmp(a, "--out") || !strcmp(a, "-o")) out = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) in = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "--format")) {
            fmt_name = tool_arg(argc, argv, &i);
            if (parse_format(fmt_name, &fmt)) {
                fprintf(stderr, "glm-convert: error: --format expects fp8-channel, fp8-block or bf16, got '%s'\n", fmt_name);
                return EXIT_USAGE;
            }
        } else { fprintf(stderr, "glm-convert: error: unknown argument '%s' (see --help)\n", a); return EXIT_USAGE; }
    }
    if (!out) { fprintf(stderr, "glm-convert: error: --out DIR is required (see --help)\n"); return EXIT_USAGE; }
    if (synthetic == !!in) { fprintf(stderr, "glm-convert: error: give either --synthetic or -m DIR\n"); return EXIT_USAGE; }
    if (in && fmt == GLM_FMT_BF16) { fprintf(stderr, "glm-convert: error: -m converts to fp8-channel or fp8-block\n"); return EXIT_USAGE; }
    if (in && (preset || layers || vocab)) { fprintf(stderr, "glm-convert: error: --preset, --layers and --vocab go with --synthetic\n"); return EXIT_USAGE; }
    glm_hparams hp;
    if (synthetic) {
        if (!preset) { fprintf(stderr, "glm-convert: error: --synthetic needs --preset tiny|glm-4.7\n"); return EXIT_USAGE; }
        if (glm_preset(preset, layers, &hp) != GLM_OK) { fprintf(stderr, "glm-convert: error: --preset: %s\n", glm_last_error()); return EXIT_USAGE; }
        if (vocab) {
            /* end-of-sequence ids the smaller vocabulary lacks move to its last ids */
            hp.n_vocab = vocab;
            for (int i = 0; i < hp.n_eos; i++)
                if (hp.eos[i] >= vocab) hp.eos[i] = vocab - 1 - i < 0 ? 0 : vocab - 1 - i;
        }
    } else {
        struct stat si;
        if (stat(in, &si) != 0 || !S_ISDIR(si.st_mode)) {
            fprintf(stderr, "glm-convert: error: -m %s: %s\n", in, errno && stat(in, &si) != 0 ? strerror(errno) : "not a folder");
            return EXIT_FAIL;
        }
    }

    out_dir o;
    int rc = check_out(out, in, force, &o);
    if (rc) return rc;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    if ((rc = make_tmp(&o))) return rc;

    progress_state ps = { .what = in ? "converting" : "writing", .t0 = tool_now(), .tty = isatty(2) };
    if (in) {
        if (threads == 0) { long c = sysconf(_SC_NPROCESSORS_ONLN); threads = c > 0 ? (int)c : 1; }
        if (glm_convert_checkpoint(in, o.tmp, fmt, threads, (uint64_t)shard_mb * 1000000, progress, &ps) != GLM_OK)
            return failed(&o, glm_last_error());
    } else if (glm_synthetic_write(&hp, fmt, o.tmp, seed, progress, &ps) != GLM_OK) {
        return failed(&o, glm_last_error());
    }
    if (got_signal) return failed(&o, "interrupted");
    if ((rc = place(&o))) return rc;
    double dt = tool_now() - ps.t0;
    if (in)
        fprintf(stderr, "glm-convert: wrote %s (%s) from %s: %.1f MB in %.2f s, %.0f MB/s with %d thread%s\n", o.path, fmt_name, in,
                ps.total / 1e6, dt, dt > 0 ? ps.total / 1e6 / dt : 0.0, threads, threads == 1 ? "" : "s");
    else
        fprintf(stderr, "glm-convert: wrote %s (%s, %s, %d layers) in %.1f s\n", o.path, preset, fmt_name, hp.n_layer, dt);
    return EXIT_OK;
}
