/* tool-run.h - runs the command-line tools from a test: the tools' directory from
 * GLM_BIN (the Makefile's test rule sets it), a command line run by the shell with its
 * exit status, stdout and stderr captured, and whole files read back. Include after
 * test.h (it writes into test_tmp, so the binary ends with RUN_TESTS_IN_TMP). */
#ifndef GLM_TEST_TOOL_RUN_H
#define GLM_TEST_TOOL_RUN_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

/* The directory of the tool binaries: $GLM_BIN, else build/bin. */
static inline const char *tool_bin(void) {
    const char *b = getenv("GLM_BIN");
    return b && *b ? b : "build/bin";
}

/* Reads a whole file into a malloc'd NUL-terminated buffer (*len bytes, len may be NULL);
 * NULL when it cannot be read. */
static inline char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0, r;
    char *buf = malloc(cap + 1);
    while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            char *nb = realloc(buf, 2 * cap + 1);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (!buf) return NULL;
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

/* The result of one command: exit status (128 + signal when killed), stdout, stderr. */
typedef struct {
    int status;
    char *out, *err;
} tool_result;

static inline void tool_result_free(tool_result *r) { free(r->out); free(r->err); r->out = r->err = NULL; }

/* Runs the printf-formatted command line with sh, stdout and stderr captured into *r
 * (free with tool_result_free); returns the exit status. */
__attribute__((format(printf, 2, 3)))
static inline int run_tool(tool_result *r, const char *fmt, ...) {
    char cmd[8192], full[8192 + 600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    snprintf(full, sizeof full, "( %s ) >'%s/run.out' 2>'%s/run.err'", cmd, test_tmp, test_tmp);
    int st = system(full);
    char path[300];
    snprintf(path, sizeof path, "%s/run.out", test_tmp);
    r->out = slurp(path, NULL);
    snprintf(path, sizeof path, "%s/run.err", test_tmp);
    r->err = slurp(path, NULL);
    if (!r->out) r->out = calloc(1, 1);
    if (!r->err) r->err = calloc(1, 1);
    r->status = st == -1 ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (r->status != 0 && getenv("GLM_TEST_VERBOSE")) fprintf(stderr, "  $ %s\n  -> %d: %s", cmd, r->status, r->err);
    return r->status;
}

#endif
