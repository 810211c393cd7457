/* tokenizer-once.h - the tokenizer of the fuzz targets that encode or decode: loaded
 * once, from $GLM_FUZZ_TOKENIZER or the GLM-style models/glm-tiny/tokenizer.json.
 * Included by tests/fuzz/fuzz-*.c; not a target itself. */
#ifndef GLM_FUZZ_TOKENIZER_ONCE_H
#define GLM_FUZZ_TOKENIZER_ONCE_H

#include "glm.h"

#include <stdio.h>
#include <stdlib.h>

/* Returns the tokenizer, loaded on the first call; aborts with a message naming target
 * when it cannot be loaded. */
static inline glm_tokenizer *fuzz_tokenizer(const char *target) {
    static glm_tokenizer *tok;
    if (!tok) {
        const char *path = getenv("GLM_FUZZ_TOKENIZER");
        if (glm_tokenizer_load(path ? path : "models/glm-tiny/tokenizer.json", &tok)) {
            fprintf(stderr, "%s: %s (run from the repository root)\n", target, glm_last_error());
            abort();
        }
    }
    return tok;
}

#endif
