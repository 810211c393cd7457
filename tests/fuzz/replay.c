/* replay.c - a main for a fuzz target outside libFuzzer: feeds every file of its
 * corpus to LLVMFuzzerTestOneInput, one test a file, and prints "N passed, N failed,
 * N skipped" like every test binary. A crash is a crash: the process dies (loudly under
 * the sanitizers) after "[ RUN  ] <file>" names the input.
 *
 * usage: replay-<name> [DIR|FILE]...   default: tests/fuzz/corpus/<name>, <name> from
 * the binary's own name (replay-json -> json); GLM_TEST_ONLY selects files by name. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../test.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads a whole file into an exactly sized buffer (so that ASan sees any read past its
 * end); returns it or NULL with errno set. *len gets its size. */
static uint8_t *read_input(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    uint8_t *b = NULL;
    struct stat st;
    if (!fstat(fileno(f), &st) && st.st_size >= 0) {
        *len = (size_t)st.st_size;
        b = malloc(*len ? *len : 1);
        if (b && fread(b, 1, *len, f) != *len) {
            free(b);
            b = NULL;
            errno = EIO;
        }
    }
    fclose(f);
    return b;
}

/* Sorts directory entry names. */
static int cmp_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int passed, failed;

/* Runs one input file as a test: passes when the target returns 0. */
static void replay_file(const char *path, const char *name) {
    if (!test_selected_(name)) return;
    fprintf(stderr, "[ RUN  ] %s\n", path);
    size_t len = 0;
    uint8_t *data = read_input(path, &len);
    if (!data) {
        fprintf(stderr, "[ FAIL ] %s: cannot read: %s\n", path, strerror(errno));
        failed++;
        return;
    }
    int rc = LLVMFuzzerTestOneInput(data, len);
    free(data);
    if (rc) {
        fprintf(stderr, "[ FAIL ] %s: the target returned %d\n", path, rc);
        failed++;
    } else {
        passed++;
    }
}

/* Runs every regular file of a directory (sorted by name), or one file. */
static void replay_path(const char *path) {
    struct stat st;
    if (stat(path, &st)) {
        fprintf(stderr, "[ FAIL ] %s: %s\n", path, strerror(errno));
        failed++;
        return;
    }
    if (!S_ISDIR(st.st_mode)) {
        const char *slash = strrchr(path, '/');
        replay_file(path, slash ? slash + 1 : path);
        return;
    }
    DIR *d = opendir(path);
    if (!d) {
        fprintf(stderr, "[ FAIL ] %s: %s\n", path, strerror(errno));
        failed++;
        return;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            char **nn = realloc(names, cap * sizeof *names);
            if (!nn) { fprintf(stderr, "out of memory\n"); exit(1); }
            names = nn;
        }
        if (!(names[n++] = strdup(e->d_name))) { fprintf(stderr, "out of memory\n"); exit(1); }
    }
    closedir(d);
    if (n) qsort(names, n, sizeof *names, cmp_names);
    for (size_t i = 0; i < n; i++) {
        size_t pl = strlen(path) + strlen(names[i]) + 2;
        char *full = malloc(pl);
        if (!full) { fprintf(stderr, "out of memory\n"); exit(1); }
        snprintf(full, pl, "%s/%s", path, names[i]);
        struct stat fst;
        if (!stat(full, &fst) && S_ISREG(fst.st_mode)) replay_file(full, names[i]);
        free(full);
        free(names[i]);
    }
    free(names);
}

int main(int argc, char **argv) {
    if (argc > 1) {
        for (int i = 1; i < argc; i++) replay_path(argv[i]);
    } else {
        const char *base = strrchr(argv[0], '/');
        base = base ? base + 1 : argv[0];
        if (!strncmp(base, "replay-", 7)) base += 7;
        else if (!strncmp(base, "fuzz-", 5)) base += 5;
        char dir[1024];
        snprintf(dir, sizeof dir, "tests/fuzz/corpus/%s", base);
        replay_path(dir);
    }
    return test_summary_(passed, failed, 0);
}
