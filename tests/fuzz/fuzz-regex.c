/* fuzz-regex.c - the tokenizer's regex engine on untrusted patterns and subjects. The
 * input is a pattern, a NUL byte, then the subject (no NUL: the whole input is the
 * pattern, searched in a fixed text). A pattern compiles or is refused with a message;
 * then every match is found as a Split pre-tokenizer finds them, under the step budget
 * the tokenizer gives a text of that length. The subject need not be valid UTF-8: the
 * engine must still never read past it. */
#include "regex.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char FIXED[] = "Hello, World! It's 2024: naïve café 中文 ١٢٣ 😀\r\n\t  x__y";

/* Compiles and runs one case; returns 0 (abort on a broken invariant). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *nul = memchr(data, 0, size);
    size_t plen = nul ? (size_t)(nul - data) : size;
    const uint8_t *s = nul ? nul + 1 : (const uint8_t *)FIXED;
    size_t n = nul ? size - plen - 1 : sizeof FIXED - 1;
    glm_regex *re = NULL;
    char err[256];
    err[0] = 0;
    if (glm_regex_compile((const char *)data, plen, &re, err, sizeof err)) {
        if (!err[0] || re) abort();  /* a refusal names its reason */
        return 0;
    }
    glm_regex_scratch scr = {0};
    scr.steps_max = GLM_REGEX_STEPS_BASE + GLM_REGEX_STEPS_PER_BYTE * (uint64_t)n;
    size_t pos = 0, ms = 0, me = 0;
    long last_end = -1;
    for (;;) {
        int r = glm_regex_search(re, &scr, s, n, pos, &ms, &me);
        if (r <= 0) break;
        if (ms < pos || me < ms || me > n) abort();  /* a match lies within the subject */
        if (me == ms && last_end == (long)me) {
            if (ms >= n) break;
            pos = ms + 1;  /* step over one byte: the subject may be invalid UTF-8 */
            continue;
        }
        last_end = (long)me;
        pos = me > ms ? me : ms + 1;
        if (pos > n) break;
    }
    glm_regex_scratch_free(&scr);
    glm_regex_free(re);
    return 0;
}
