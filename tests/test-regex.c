/* test-regex.c - the tokenizer's regex engine on its own: Oniguruma semantics for
 * alternation order, greedy / lazy / possessive and counted quantifiers, atomic groups,
 * lookahead, anchors, Unicode classes and case folding, and compile errors that name
 * the unsupported construct. Tokenizer-level parity lives in test-tokenizer.c. */
#include "test.h"
#include "regex.h"

#include <stdint.h>

/* Returns the match as "[s,e)" text, "none", or "error" (for compact checks). */
static const char *find(const char *pat, const char *text, size_t from) {
    static char buf[64];
    glm_regex *re = NULL;
    char err[256];
    if (glm_regex_compile(pat, strlen(pat), &re, err, sizeof err)) {
        snprintf(buf, sizeof buf, "compile error");
        fprintf(stderr, "  %s: %s\n", pat, err);
        return buf;
    }
    glm_regex_scratch scr = {0};
    size_t ms = 0, me = 0;
    int r = glm_regex_search(re, &scr, (const uint8_t *)text, strlen(text), from, &ms, &me);
    if (r == 1) snprintf(buf, sizeof buf, "[%zu,%zu)", ms, me);
    else snprintf(buf, sizeof buf, r == 0 ? "none" : "error");
    glm_regex_scratch_free(&scr);
    glm_regex_free(re);
    return buf;
}

#define MATCH(pat, text, want) CHECK_MSG(!strcmp(find(pat, text, 0), want), "%s on \"%s\": got %s, want %s", pat, text, find(pat, text, 0), want)

/* Returns the compile error text of pat ("" when it compiles). */
static const char *compile_error(const char *pat) {
    static char err[256];
    glm_regex *re = NULL;
    err[0] = 0;
    if (!glm_regex_compile(pat, strlen(pat), &re, err, sizeof err)) {
        glm_regex_free(re);
        err[0] = 0;
    }
    return err;
}

#define REJECT(pat, word) CHECK_MSG(strstr(compile_error(pat), word) != NULL, "%s: error \"%s\" should name %s", pat, compile_error(pat), word)

TEST(alternation_and_quantifiers) {
    MATCH("a|ab", "ab", "[0,1)");            /* leftmost-first, not longest */
    MATCH("ab|a", "ab", "[0,2)");
    MATCH("a*?b", "aaab", "[0,4)");
    MATCH("a+?", "aaa", "[0,1)");
    MATCH("a*+a", "aaa", "none");            /* possessive gives nothing back */
    MATCH("a?+a", "a", "none");
    MATCH("(?>a+)b", "aaab", "[0,4)");
    MATCH("(?>a|ab)c", "abc", "none");       /* atomic: no retry of the alternative */
    MATCH("\\d{2,3}", "12345", "[0,3)");
    MATCH("\\d{2,3}?", "12345", "[0,2)");
    MATCH("x{,2}y", "xxxy", "[1,4)");
    MATCH("a{3}", "aa", "none");
    MATCH("a{b", "a{b", "[0,3)");            /* not an interval: a literal brace */
    MATCH("(?:ab){2}", "abababx", "[0,4)");
    MATCH("(?:ab)+?c", "ababc", "[0,5)");
    MATCH("(a|)*c", "aac", "[0,3)");         /* empty iterations end the loop */
    MATCH("(a*)*b", "aaac", "none");
    MATCH("x*", "ab", "[0,0)");
    MATCH("\\s+(?!\\S)", "a   b", "[1,3)");
    MATCH("\\s+(?=b)", "a   b", "[1,4)");
}

TEST(anchors) {
    MATCH("^b", "a\nb", "[2,3)");
    MATCH("a$", "a\nb", "[0,1)");
    MATCH("\\Aa", "ba", "none");
    MATCH("b\\z", "ab\n", "none");
    MATCH("b\\Z", "ab\n", "[1,2)");
    MATCH("\\bfoo\\b", "a foo.", "[2,5)");
    MATCH("\\Boo", "foo", "[1,3)");
    MATCH("a.c", "a\nc abc", "[4,7)");
    MATCH("(?m:a.c)", "a\nc", "[0,3)");
}

TEST(unicode_classes) {
    MATCH("[\\p{Lu}\\p{Lt}]+", "abCDe", "[2,4)");
    MATCH("[^\\s\\p{L}\\p{N}]+", "ab!?c", "[2,4)");
    MATCH("\\p{^L}", "ab1", "[2,3)");
    MATCH("\\P{L}", "ab1", "[2,3)");
    MATCH("\\p{N}+", "x\xd9\xa1\xd9\xa2\xe2\x85\xab", "[1,8)");                   /* Arabic-Indic digits, Roman XII */
    MATCH("[\xe4\xb8\x80-\xe9\xbe\xa5]+", "abc\xe4\xb8\xad\xe6\x96\x87" "def", "[3,9)"); /* CJK range */
    MATCH("\\p{M}+", "e\xcc\x81\xcc\x88", "[1,5)");
    MATCH("\\s", "a\xe3\x80\x80" "b", "[1,4)");                                 /* U+3000 is White_Space */
    MATCH("\\h+", "xyzBEEFg", "[3,7)");
    MATCH("[\\-.]+", "a-.b", "[1,3)");
    MATCH("[a[0-9]]+", "xa1b", "[1,3)");
    MATCH("\\w+", "_a\xc3\xa9" "1-", "[0,5)");
    MATCH("\\x41\\u00e9\\x{1F600}", "A\xc3\xa9\xf0\x9f\x98\x80", "[0,7)");
}

TEST(case_folding) {
    MATCH("(?i:'s|'t)", "'S", "[0,2)");
    MATCH("(?i)'s", "'\xc5\xbf", "[0,3)");                   /* U+017F long s folds to s */
    MATCH("(?i:k)", "\xe2\x84\xaa", "[0,3)");                /* U+212A Kelvin */
    MATCH("(?i:[a-c]+)", "xABCd", "[1,4)");
    MATCH("(?i:x)y", "XY", "none");                          /* the option ends with its group */
    MATCH("a(?i)b", "aB", "[0,2)");
}

TEST(unsupported_constructs) {
    REJECT("[a-c&&b]", "intersection");
    REJECT("(?<=a)b", "lookbehind");
    REJECT("(?<!a)b", "lookbehind");
    REJECT("(a)\\1", "backreference");
    REJECT("[[:alpha:]]", "POSIX");
    REJECT("\\p{Han}", "Han");
    REJECT("(?x)a", "extended");
    REJECT("a)", "unmatched");
    REJECT("(a", "missing )");
    REJECT("*a", "target of repeat");
    REJECT("\\R", "\\R");
    REJECT("a{3,2}", "bound");
}

/* A pattern with exponential backtracking stops at the retry limit instead of hanging. */
TEST(retry_limit) {
    const char *r = find("(a+)+b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 0);
    CHECK(!strcmp(r, "error") || !strcmp(r, "none"));
}

RUN_TESTS()
