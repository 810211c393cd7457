/* test-regex.c - the tokenizer's regex engine on its own: Oniguruma semantics for
 * alternation order, greedy / lazy / possessive and counted quantifiers, atomic groups,
 * lookahead, anchors, Unicode classes and case folding, and compile errors that name
 * the unsupported construct. Tokenizer-level parity lives in test-tokenizer.c. */
#include "test.h"
#include "regex.h"

#include <stdint.h>
#include <time.h>

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

/* Returns pre repeated n times, then mid, then post repeated n times (malloc'd). */
static char *nest(const char *pre, const char *mid, const char *post, int n) {
    size_t lp = strlen(pre), lm = strlen(mid), lq = strlen(post);
    char *p = malloc(lp * (size_t)n + lm + lq * (size_t)n + 1), *q = p;
    for (int i = 0; i < n; i++, q += lp) memcpy(q, pre, lp);
    memcpy(q, mid, lm);
    q += lm;
    for (int i = 0; i < n; i++, q += lq) memcpy(q, post, lq);
    *q = 0;
    return p;
}

/* Seconds on a monotonic clock. */
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* 100,000 levels of groups, classes or quantifiers are a compile error naming the
 * nesting (they overflowed the stack of the parser and code generator); 200 levels
 * still compile and match. */
TEST(nesting_limit) {
    static const char *deep[][3] = {
        {"(", "a", ")"}, {"(?:", "a", ")"}, {"(?>", "a", ")"}, {"(?=", "a", ")"}, {"(?i:", "a", ")"},
        {"[", "a", "]"}, {"(?:a|", "b", ")"}, {"", "a", "*"}, {"", "a", "{1}"}, {"", "a", "+?"},
        {"(?:", "a", ")*"}, {"[a[", "b", "]]"},
    };
    for (size_t i = 0; i < sizeof deep / sizeof deep[0]; i++) {
        char *p = nest(deep[i][0], deep[i][1], deep[i][2], 100000);
        double t0 = now_s();
        const char *e = compile_error(p);
        CHECK_MSG(strstr(e, "nesting deeper than 256 at offset") != NULL, "%s x 100000: \"%s\"", deep[i][0], e);
        CHECK_MSG(now_s() - t0 < 1.0, "%s x 100000 took %.1f s", deep[i][0], now_s() - t0);
        free(p);
    }
    /* 10,000 nested classes took 50 s (quadratic); now they stop at the limit at once */
    char *p = nest("[", "a", "]", 10000);
    double t0 = now_s();
    CHECK(strstr(compile_error(p), "nesting deeper than") != NULL && now_s() - t0 < 1.0);
    free(p);
    p = nest("(?:", "a", ")", 200);
    MATCH(p, "ba", "[1,2)");
    free(p);
    p = nest("[", "a", "]", 200);
    MATCH(p, "ba", "[1,2)");
    free(p);
}

/* A repeated body that compiles to nothing ((?i), an empty group) repeats to nothing:
 * {100000}{100000}{100000} over it never reached the instruction cap and hung. */
TEST(empty_body_repeat) {
    double t0 = now_s();
    MATCH("(?:(?i)(?i)){100000}{100000}{100000}", "ab", "[0,0)");
    MATCH("x(?:(?i)(?m)){5}{100000}{100000}y", "axyb", "[1,3)");
    MATCH("(?:(?i)(?m)){3,}a", "ba", "[1,2)");
    CHECK_MSG(now_s() - t0 < 1.0, "took %.1f s", now_s() - t0);
    /* bodies that compile to something still hit the instruction cap, and bodies that
     * compile to little (20,000 (?i) and one character) a cap on the work */
    CHECK(strstr(compile_error("(?:ab){100000}{100000}"), "too large") != NULL);
    char *p = nest("(?i)", "", "", 20000), *q = malloc(strlen(p) + 32);
    sprintf(q, "(?:%sa){100000}", p);
    t0 = now_s();
    CHECK(strstr(compile_error(q), "too large") != NULL);
    CHECK_MSG(now_s() - t0 < 1.0, "took %.1f s", now_s() - t0);
    free(p);
    free(q);
}

/* Possessive and atomic groups re-scan the rest of the text from every start: the
 * work is bounded, and past the bound the search fails (an error) instead of taking
 * seconds (100 KB of 'a': 12 s before; 30 KB here: over 1 s before, 0.1 s now). */
TEST(bounded_work) {
    size_t n = 30000;
    char *text = malloc(n + 1);
    memset(text, 'a', n);
    text[n] = 0;
    const char *pats[] = {"a*+b", "(?>a*)b", "(?>a+)b", "(?:a|b)*+c", "(?=a*c)", "a(?:x?){20000}c"};
    for (size_t i = 0; i < sizeof pats / sizeof pats[0]; i++) {
        double t0 = now_s();
        const char *r = find(pats[i], text, 0);
        double dt = now_s() - t0;
        CHECK_MSG(!strcmp(r, "error"), "%s on 30 KB of a: %s, want error", pats[i], r);
        CHECK_MSG(dt < (TEST_ASAN ? 10.0 : 2.0), "%s on 30 KB of a took %.1f s", pats[i], dt);
    }
    /* the same patterns on short text still answer */
    MATCH("a*+b", "aaab", "[0,4)");
    MATCH("(?>a*)b", "xaab", "[1,4)");
    MATCH("(?:a|b)*+c", "abac", "[0,4)");
    /* a budget shared by a run of searches (steps_max) stops the run once spent */
    glm_regex *re = NULL;
    char err[256];
    CHECK(glm_regex_compile("a", 1, &re, err, sizeof err) == 0);
    glm_regex_scratch scr = {0};
    scr.steps_max = 1000;
    size_t ms, me, from = 0;
    int r, hits = 0;
    while ((r = glm_regex_search(re, &scr, (const uint8_t *)text, n, from, &ms, &me)) == 1) {
        hits++;
        from = me;
    }
    CHECK(r == -1 && hits > 100 && hits < 1000 && scr.steps_used >= 1000);
    glm_regex_scratch_free(&scr);
    glm_regex_free(re);
    free(text);
}

/* Multibyte characters are read within the pattern and the subject, never past them. */
TEST(multibyte_bounds) {
    /* "(?" then a 2-byte character: the error names it (one byte past the pattern was read) */
    const char *e = compile_error("(?\xc3\xa9");
    CHECK_MSG(strstr(e, "(?\xc3\xa9 is not supported") != NULL, "\"%s\"", e);
    CHECK(strstr(compile_error("(?"), "unterminated") != NULL);
    CHECK(strstr(compile_error("a(?i\xe4\xb8\xad)"), "not supported") != NULL);
    /* an escaped non-ASCII character is that character (U+1F600 was taken for the end of
     * a list of escape letters, with an empty error; U+0173 for \s), found by fuzz-regex */
    MATCH("\\\xf0\x9f\x98\x80+", "a\xf0\x9f\x98\x80\xf0\x9f\x98\x80", "[1,9)");
    MATCH("\\\xc5\xb3", "a \xc5\xb3", "[2,4)");
    MATCH("[a-\\\xc5\xb3]+", "!\xc5\xb2\xc5\xb3z", "[1,6)");
    /* a subject cut inside a character: the cut bytes match nothing */
    const char *s = "a\xe4\xb8\xad";
    glm_regex *re = NULL;
    char err[256];
    glm_regex_scratch scr = {0};
    size_t ms = 0, me = 0;
    CHECK(glm_regex_compile("[^a]", 4, &re, err, sizeof err) == 0);
    CHECK(glm_regex_search(re, &scr, (const uint8_t *)s, 2, 0, &ms, &me) == 0);
    CHECK(glm_regex_search(re, &scr, (const uint8_t *)s, 4, 0, &ms, &me) == 1 && ms == 1 && me == 4);
    glm_regex_free(re);
    /* invalid UTF-8: backtracking over what a repeat took never steps back before where
     * it started (it stepped to before the subject, found by fuzz-regex under UBSan) */
    const char *pats[] = {"^\\w+$", "\\w*$", ".+x", "(?:\\w)+$", "\\W+?$"};
    const char *bad = "A\x85\x85\x85\x85\x85.";
    for (size_t i = 0; i < sizeof pats / sizeof pats[0]; i++) {
        CHECK(glm_regex_compile(pats[i], strlen(pats[i]), &re, err, sizeof err) == 0);
        for (size_t off = 0; off < 3; off++) {
            int r = glm_regex_search(re, &scr, (const uint8_t *)bad + off, 7 - off, 0, &ms, &me);
            CHECK_MSG(r == 0 || (r == 1 && ms <= me && me <= 7 - off), "%s at %zu: %d [%zu,%zu)", pats[i], off, r, ms, me);
        }
        glm_regex_free(re);
    }
    CHECK(glm_regex_compile("\\b", 2, &re, err, sizeof err) == 0);
    CHECK(glm_regex_search(re, &scr, (const uint8_t *)s + 1, 2, 0, &ms, &me) == 0);
    glm_regex_free(re);
    glm_regex_scratch_free(&scr);
}

RUN_TESTS()
