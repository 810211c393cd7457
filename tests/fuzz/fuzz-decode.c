/* fuzz-decode.c - arbitrary bytes as int32 token ids (native byte order) decoded with
 * the GLM-style models/glm-tiny tokenizer ($GLM_FUZZ_TOKENIZER names another): an id
 * outside the vocabulary is an error naming it, never a read outside the tables; the
 * streaming decoder gives the same text as the whole decode. */
#include "glm.h"
#include "tokenizer-once.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Decodes one input; returns 0 (abort on a broken invariant). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const glm_tokenizer *tok = fuzz_tokenizer("fuzz-decode");
    int n = (int)(size / 4 < 100000 ? size / 4 : 100000);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
    if (!ids) return 0;
    memcpy(ids, data, sizeof(int32_t) * (size_t)n);
    int first_bad = -1;
    for (int i = 0; i < n && first_bad < 0; i++)
        if (!glm_token_piece(tok, ids[i], NULL)) first_bad = i;
    for (int skip = 0; skip < 2; skip++) {
        int flags = skip ? GLM_DETOK_SKIP_SPECIAL : 0;
        char *out = NULL;
        size_t len = 0;
        int rc = glm_detokenize(tok, ids, n, flags, &out, &len);
        if (first_bad >= 0) {
            char want[96];
            snprintf(want, sizeof want, "id %d at position %d is not in the vocabulary", ids[first_bad], first_bad);
            if (rc != GLM_ERR_ARG || out || !strstr(glm_last_error(), want)) abort();
        } else if (rc || !out || out[len]) {
            abort();
        }
        glm_detok_stream *st = NULL;
        if (glm_detok_stream_new(tok, flags, &st)) abort();
        size_t got = 0;
        const char *t;
        size_t tl;
        int i = 0;
        for (; i < n; i++) {
            rc = glm_detok_stream_push(st, ids[i], &t, &tl);
            if (rc) {
                if (rc != GLM_ERR_ARG || i != first_bad) abort();
                break;
            }
            if (out && (got + tl > len || memcmp(out + got, t, tl))) abort();
            got += tl;
        }
        if (i == n && out) {
            if (glm_detok_stream_flush(st, &t, &tl) || got + tl != len || memcmp(out + got, t, tl)) abort();
        }
        glm_detok_stream_free(st);
        free(out);
    }
    free(ids);
    return 0;
}
