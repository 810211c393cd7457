/* common.h - helpers the command-line tools share: flag values, id lists, the
 * default model directory, load progress on stderr, timing. */
#ifndef GLM_TOOLS_COMMON_H
#define GLM_TOOLS_COMMON_H

#include "glm.h"

#include <stdint.h>
#include <stdio.h>

/* Exit codes of every tool: 130 is a run stopped by Ctrl-C (128 + SIGINT), as shells report it. */
enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_INTERRUPTED = 130 };

/* Names the tool in every message common.c prints (call first in main; without it the
 * name is the program's file name). */
void tool_init(const char *prog);
/* The tool's name for messages: "glm-run". */
const char *tool_name(void);
/* Prints "<tool>: error: <message>" on stderr and exits with EXIT_USAGE. */
void tool_usage_error(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

/* Catches SIGINT: the first one sets the flag tool_interrupted() reads (the tool stops at
 * its next step; loading stops through tool_progress), a second one exits at once with 130.
 * A SIGINT ignored when the tool started (a background job) stays ignored. */
void tool_catch_sigint(void);
/* Non-zero once SIGINT arrived (since tool_clear_interrupt). */
int tool_interrupted(void);
/* Forgets an earlier SIGINT (a chat goes on after a stopped reply). */
void tool_clear_interrupt(void);

/* Warns on stderr, in the same words in every tool, when n_ctx is past the model's trained
 * context (max_position_embeddings); prints nothing otherwise. */
void tool_warn_ctx(const char *prog, int n_ctx, const glm_model *m);

/* Seconds on a monotonic clock. */
double tool_now(void);
/* Parses "1,2,3" / "[1, 2, 3]" / "1 2 3"; returns 0, or -1 with a message naming the byte offset. */
int tool_parse_ids(const char *s, int32_t **ids, int *n, char *err, size_t err_len);
/* Parses "512,2048" into ints; returns 0 or -1. */
int tool_parse_int_list(const char *s, int **vals, int *n);
/* Strict integer / float flag values: exit with a usage error naming the tool and the flag
 * when bad (empty, trailing garbage, overflow, NaN or infinity, out of range). */
int tool_int(const char *flag, const char *v, long lo, long hi);
float tool_float(const char *flag, const char *v);
/* A float in the interval lb lo, hi rb, where lb is '(' or '[' and rb is ')' or ']':
 * tool_float_in("--top-p", v, '(', 0, 1, ']') takes 0 < p <= 1. */
float tool_float_in(const char *flag, const char *v, char lb, double lo, double hi, char rb);
/* The value after a flag, or a usage error when it is missing. */
const char *tool_arg(int argc, char **argv, int *i);
/* The default model directory: $GLM_MODEL, else models/glm-tiny next to the build. */
const char *tool_default_model(void);
/* Load progress on stderr (a bar on a terminal, nothing otherwise); returns non-zero, which
 * cancels the load, once SIGINT arrived. */
int tool_progress(uint64_t done, uint64_t total, void *user);
/* Loads a model with progress, printing an error naming the directory on failure. */
glm_model *tool_load_model(const char *prog, const char *dir);
/* Reads a whole file (or "-" for stdin) into a NUL-terminated buffer; NULL with a message on failure. */
char *tool_read_text(const char *prog, const char *path, size_t *len);
/* Parses "cpu"/"cuda"; exits with a usage error otherwise. */
glm_device tool_device(const char *v);
/* The default device: CUDA when the build has it and a GPU is present, else CPU. */
glm_device tool_default_device(void);
/* The scheduler's default token budget a step (--batch-tokens) on dev. */
int tool_default_batch_tokens(glm_device dev);

/* Parses a --kv-type value, "bf16" or "fp8"; exits with a usage error otherwise. */
glm_kv_type tool_kv_type(const char *v);

/* ---- tensor parallel: --tp N, --moe-split ep|tp, --gpus LIST, --dist-init SPEC
 * (docs/PARALLEL.md) ---- */
typedef struct {
    int n_tp;                  /* --tp: ranks (default 1) */
    int tp_set;                /* --tp was given */
    int moe_split;             /* --moe-split: glm_moe_split, or -1: ep where the ranks divide the experts, else tp */
    int *gpus;                 /* --gpus: CUDA devices, or NULL */
    int n_gpus;
    const char *dist_init;     /* --dist-init: "file:PATH" or "tcp:HOST:PORT" (points into argv), or NULL */
    int rank, world_size, local_rank;  /* with --dist-init: RANK, WORLD_SIZE, LOCAL_RANK */
} tool_tp_opts;

/* Prints the --help lines of the four flags, descriptions from column width. */
void tool_tp_usage(FILE *f, int width);
/* Default options: one rank, the tp split, no GPU list, one process. */
tool_tp_opts tool_tp_default(void);
/* When argv[*i] is --tp, --moe-split, --gpus or --dist-init, reads its value into o (a bad
 * value is a usage error naming the flag, exit 2; --dist-init also reads RANK, WORLD_SIZE
 * and LOCAL_RANK, and a bad one is a usage error naming the variable) and returns 1;
 * returns 0 for any other argument. */
int tool_tp_flag(int argc, char **argv, int *i, tool_tp_opts *o);
/* The checks of --dist-init that need no model, to run right after the arguments: it needs
 * --device cuda, and a --tp given must equal WORLD_SIZE. Returns 0, or prints the error and
 * returns EXIT_USAGE. */
int tool_tp_check(const tool_tp_opts *o, glm_device dev);
/* Checks o against the model's geometry and the device and sets cp's n_tp, moe_split,
 * gpu, gpus, n_gpus and dist_init (cp->gpus points to a copy common.c keeps, valid until
 * the process ends). Returns 0, or prints the error and returns EXIT_USAGE (tool_tp_check's
 * errors; --gpus without --device cuda; a --tp that does not divide the KV heads, or the experts with --moe-split ep; a
 * --gpus index past the GPUs present) or EXIT_FAIL (--tp, --gpus or --dist-init on CUDA
 * with no GPU). Prints on stderr where the ranks run when there are several, and a notice
 * when ranks share GPUs. Without --tp on CUDA, takes the fewest of 1, 2, 4 or 8 GPUs whose
 * free memory holds the model's weights split that many ways, and says so. */
int tool_tp_apply(const tool_tp_opts *o, const glm_model *m, glm_ctx_params *cp);
/* Non-zero in a process of --dist-init whose RANK is not 0: it writes nothing to stdout
 * and no progress on stderr (errors only), while running every step with the others. */
int tool_tp_quiet(void);
/* Frees what tool_tp_flag allocated (after glm_ctx_free: a context may point to it). */
void tool_tp_free(tool_tp_opts *o);

/* ---- speculative decoding with the model's MTP layer: --draft N, --no-mtp ---- */
typedef struct {
    int n_draft;               /* --draft: tokens drafted a step (0 = off, the default) */
    int no_mtp;                /* --no-mtp: never load the MTP layer */
} tool_spec_opts;

/* Prints the --help lines of the two flags, descriptions from column width. */
void tool_spec_usage(FILE *f, int width);
/* When argv[*i] is --draft or --no-mtp, reads it into o (a bad value is a usage error,
 * exit 2) and returns 1; returns 0 for any other argument. */
int tool_spec_flag(int argc, char **argv, int *i, tool_spec_opts *o);
/* Checks o against the context parameters and sets cp->mtp. Returns 0, or prints the error
 * and returns EXIT_USAGE (--draft with --no-mtp). */
int tool_spec_apply(const char *prog, const tool_spec_opts *o, glm_ctx_params *cp);
/* tool_load_model with the MTP layer required (--draft > 0), left out (--no-mtp) or
 * bound when the checkpoint has it whole (neither). */
glm_model *tool_load_model_spec(const char *prog, const char *dir, const tool_spec_opts *o);

#endif
