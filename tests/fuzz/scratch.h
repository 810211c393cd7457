/* scratch.h - the scratch files of the fuzz targets that read from a folder: a private
 * folder in memory (/dev/shm when present: one file write per input) and whole-file
 * writes. Included by tests/fuzz/fuzz-*.c; not a target itself. */
#ifndef GLM_FUZZ_SCRATCH_H
#define GLM_FUZZ_SCRATCH_H

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* Makes a fresh folder /dev/shm/glm-fuzz-<tag>-XXXXXX (or under /tmp) into dir[cap];
 * aborts when it cannot. */
static inline void scratch_dir(char *dir, size_t cap, const char *tag) {
    snprintf(dir, cap, "%s/glm-fuzz-%s-XXXXXX", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp", tag);
    if (!mkdtemp(dir)) abort();
}

/* Writes n bytes to file p (created or truncated); returns 0 on success. */
static inline int put_file(const char *p, const void *data, size_t n) {
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return -1;
    int ok = n == 0 || write(fd, data, n) == (ssize_t)n;
    return close(fd) == 0 && ok ? 0 : -1;
}

#endif
