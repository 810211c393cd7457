/* common.h - helpers the command-line tools share: flag values, id lists, the
 * default model directory, load progress on stderr, timing. */
#ifndef GLM_TOOLS_COMMON_H
#define GLM_TOOLS_COMMON_H

#include "glm.h"

#include <stdint.h>
#include <stdio.h>

/* Exit codes of every tool. */
enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2 };

/* Seconds on a monotonic clock. */
double tool_now(void);
/* Parses "1,2,3" / "[1, 2, 3]" / "1 2 3"; returns 0, or -1 with a message naming the byte offset. */
int tool_parse_ids(const char *s, int32_t **ids, int *n, char *err, size_t err_len);
/* Parses "512,2048" into ints; returns 0 or -1. */
int tool_parse_int_list(const char *s, int **vals, int *n);
/* Strict integer / float flag values: exit with a usage error naming the flag when bad. */
int tool_int(const char *flag, const char *v, long lo, long hi);
float tool_float(const char *flag, const char *v);
/* The value after a flag, or a usage error when it is missing. */
const char *tool_arg(int argc, char **argv, int *i);
/* The default model directory: $GLM_MODEL, else models/glm-tiny next to the build. */
const char *tool_default_model(void);
/* Load progress on stderr (a bar on a terminal, nothing otherwise). */
int tool_progress(uint64_t done, uint64_t total, void *user);
/* Loads a model with progress, printing an error naming the directory on failure. */
glm_model *tool_load_model(const char *prog, const char *dir);
/* Reads a whole file (or "-" for stdin) into a NUL-terminated buffer; NULL with a message on failure. */
char *tool_read_text(const char *prog, const char *path, size_t *len);
/* Parses "cpu"/"cuda"; exits with a usage error otherwise. */
glm_device tool_device(const char *v);
/* The default device: CUDA when the build has it and a GPU is present, else CPU. */
glm_device tool_default_device(void);

#endif
