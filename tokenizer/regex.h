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

/* The steps a search in a subject of n bytes may take, BASE + PER_BYTE * n; the
 * tokenizer gives all the searches over one text that many (steps_max below). Real
 * split patterns take 3 to 6 steps a byte, so this only stops a costly one
 * (backtracking over the text again and again) from running for minutes. */
#define GLM_REGEX_STEPS_BASE 1000000ull
#define GLM_REGEX_STEPS_PER_BYTE 1000ull

/* Per-thread working memory of a search (backtrack stack); zero-initialise, then
 * glm_regex_scratch_free when done. Every search is bounded: it fails after
 * 10,000,000 backtracks (Oniguruma's retry limit), the steps above (instructions run
 * plus characters taken by repeats) or 4M backtrack entries. steps_used adds up
 * the steps of the searches made with the scratch; when steps_max is not 0, it takes
 * the place of the per-search step limit: a search fails once steps_used would pass
 * it (a budget for a run of searches over one text, which the caller sets and
 * resets). */
typedef struct {
    void *stack;
    size_t cap, sp;
    size_t *slots;
    size_t n_slots;
    uint64_t steps_used, steps_max;
} glm_regex_scratch;

/* Compiles pat[0..len) (UTF-8). Returns 0 and sets *out, or -1 with a message in err
 * naming the construct and its byte offset in the pattern. */
int glm_regex_compile(const char *pat, size_t len, glm_regex **out, char *err, size_t err_len);
void glm_regex_free(glm_regex *re);

/* Finds the leftmost match in s[0..n) that starts at or after byte `from` (s should be
 * valid UTF-8; other bytes match as whatever their lead bytes decode to, a sequence cut
 * by the end matches nothing, and nothing is read outside s[0..n)).
 * Returns 1 and sets [*ms, *me), 0 when there is none, -1 when a limit above was hit,
 * or -2 when memory ran out. */
int glm_regex_search(const glm_regex *re, glm_regex_scratch *scr, const uint8_t *s, size_t n,
                     size_t from, size_t *ms, size_t *me);

void glm_regex_scratch_free(glm_regex_scratch *scr);

#endif
