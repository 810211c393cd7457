/* fuzz-encode.c - arbitrary bytes encoded with the GLM-style models/glm-tiny tokenizer
 * ($GLM_FUZZ_TOKENIZER names another tokenizer.json). Text that is not UTF-8 is an
 * error naming the offset of its first bad byte; valid text encodes, with special
 * tokens parsed or not, and decodes back to itself (glm-tiny has no normalizer). */
#include "glm.h"
#include "tokenizer-once.h"
#include "unicode.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Encodes one input; returns 0 (abort on a broken invariant). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const glm_tokenizer *tok = fuzz_tokenizer("fuzz-encode");
    size_t bad = glm_utf8_check(data, size);
    const int flags[3] = {GLM_TOK_PARSE_SPECIAL, 0, GLM_TOK_PARSE_SPECIAL | GLM_TOK_ADD_SPECIAL};
    for (int f = 0; f < 3; f++) {
        int32_t *ids = NULL;
        int n = 0;
        int rc = glm_tokenize(tok, (const char *)data, size, flags[f], &ids, &n);
        if (bad != size) {
            char want[64];
            snprintf(want, sizeof want, "invalid UTF-8 at byte offset %zu ", bad);
            if (rc != GLM_ERR_ARG || ids || !strstr(glm_last_error(), want)) abort();
            continue;
        }
        if (rc) abort();
        char *out = NULL;
        size_t len = 0;
        if (glm_detokenize(tok, ids, n, 0, &out, &len)) abort();
        if (f < 2 && (len != size || memcmp(out, data, size))) abort();  /* decode(encode(text)) == text */
        free(out);
        free(ids);
    }
    return 0;
}
