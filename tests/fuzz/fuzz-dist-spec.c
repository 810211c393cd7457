/* fuzz-dist-spec.c - bytes as a --dist-init spec through glm_comm_spec_check (the check
 * glm_comm_rendezvous and the tools run before any file or socket): an accepted spec is
 * file: with a path or tcp:HOST:PORT with a port in 1..65535; a rejected one gets a
 * message. A broken invariant traps. */
#include "comm.h"
#include "internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *s = malloc(size + 1);
    if (!s) return 0;
    memcpy(s, data, size);
    s[size] = 0;
    const int rc = glm_comm_spec_check(s);
    if (rc == GLM_OK) {
        const char *colon = strrchr(s, ':');
        if (!strncmp(s, "file:", 5)) {
            if (!s[5]) __builtin_trap();
        } else if (strncmp(s, "tcp:", 4) || !colon || colon < s + 5) {
            __builtin_trap();
        } else {
            const long p = strtol(colon + 1, NULL, 10);
            if (p < 1 || p > 65535) __builtin_trap();
        }
    } else if (rc != GLM_ERR_ARG || !glm_last_error()[0]) {
        __builtin_trap();
    }
    free(s);
    return 0;
}
