/* fuzz-tokenizer-json.c - untrusted bytes as a tokenizer.json. A file loads, or is
 * refused with a message; one that loads encodes a fixed text (special tokens parsed,
 * the post-processor template added), and every id it gives decodes, whole and
 * streamed, to the same text. */
#include "glm.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char TEXT[] = "Hello world, it's 2024! naïve 中文 <|user|> [gMASK]\r\n\t  x__y 😀 ab";

/* Loads, encodes and decodes one candidate file; returns 0 (abort on a broken invariant). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    glm_tokenizer *tok = NULL;
    if (glm_tokenizer_load_mem((const char *)data, size, "fuzz.json", &tok)) {
        if (tok || !glm_last_error()[0]) abort();  /* a refusal names its reason */
        return 0;
    }
    const int flags[2] = {GLM_TOK_PARSE_SPECIAL | GLM_TOK_ADD_SPECIAL, 0};
    for (int f = 0; f < 2; f++) {
        int32_t *ids = NULL;
        int n = 0;
        if (glm_tokenize(tok, TEXT, sizeof TEXT - 1, flags[f], &ids, &n)) {
            /* a costly split pattern may hit its limit; that is an error, not a crash */
            if (ids || !glm_last_error()[0]) abort();
            continue;
        }
        char *out = NULL;
        size_t len = 0;
        /* every id an encode gives is a token of the vocabulary */
        if (glm_detokenize(tok, ids, n, 0, &out, &len)) abort();
        for (int i = 0; i < n; i++)
            if (!glm_token_text(tok, ids[i]) || !glm_token_piece(tok, ids[i], NULL)) abort();
        glm_detok_stream *st = NULL;
        if (glm_detok_stream_new(tok, 0, &st)) abort();
        size_t got = 0;
        const char *t;
        size_t tl;
        for (int i = 0; i < n; i++) {
            if (glm_detok_stream_push(st, ids[i], &t, &tl) || got + tl > len || memcmp(out + got, t, tl)) abort();
            got += tl;
        }
        if (glm_detok_stream_flush(st, &t, &tl) || got + tl != len || memcmp(out + got, t, tl)) abort();
        glm_detok_stream_free(st);
        free(out);
        free(ids);
    }
    glm_tokenizer_free(tok);
    return 0;
}
