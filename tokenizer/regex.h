/* regex.h - a small backtracking regex engine for the split patterns of HF
 * tokenizer.json files. It follows Oniguruma's Ruby syntax and semantics (what HF
 * tokenizers uses): leftmost-first alternation, greedy/lazy/possessive quantifiers,
 * Unicode classes through utf8proc. Constructs it does not know are compile errors
 * naming the construct, never a silent difference. Internal to libglm. */
#ifndef GLM_TOK_REGEX_H
#define GLM_TOK_REGEX_H

#include <stddef.h>
#include <stdint.h>

typedef struct glm_regex glm_regex;

/* Per-thread working memory of a search (backtrack stack); zero-initialise, then
 * glm_regex_scratch_free when done. */
typedef struct {
    void *stack;
    size_t cap, sp;
    size_t *slots;
    size_t n_slots;
} glm_regex_scratch;

/* Compiles pat[0..len) (UTF-8). Returns 0 and sets *out, or -1 with a message in err
 * naming the construct and its byte offset in the pattern. */
int glm_regex_compile(const char *pat, size_t len, glm_regex **out, char *err, size_t err_len);
void glm_regex_free(glm_regex *re);

/* Finds the leftmost match in s[0..n) that starts at or after byte `from` (s must be
 * valid UTF-8). Returns 1 and sets [*ms, *me), 0 when there is none, or -1 when the
 * backtracking limit was hit or memory ran out. */
int glm_regex_search(const glm_regex *re, glm_regex_scratch *scr, const uint8_t *s, size_t n,
                     size_t from, size_t *ms, size_t *me);

void glm_regex_scratch_free(glm_regex_scratch *scr);

#endif
