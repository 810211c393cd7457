/* test.h - the tiny harness every test binary uses: TEST(name) defines a test,
 * CHECK/CHECK_NEAR record failures with file:line, RUN_TESTS() runs them all (or the
 * one GLM_TEST_ONLY names) and ends with "N passed, N failed" and a non-zero exit
 * status on any failure. */
#ifndef GLM_TEST_H
#define GLM_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* |a - b| / |b| over whole arrays (root mean square relative error); NaN in a: inf */
static inline double rel_err(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (a[i] != a[i]) return INFINITY;
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

typedef void (*test_fn)(void);
static struct { const char *name; test_fn fn; } test_list_[512];
static int test_count_, test_failed_now_;

#define TEST(tname)                                                         \
    static void test_##tname(void);                                         \
    __attribute__((constructor)) static void test_reg_##tname(void) {       \
        test_list_[test_count_].name = #tname;                              \
        test_list_[test_count_++].fn = test_##tname;                        \
    }                                                                       \
    static void test_##tname(void)

#define CHECK(cond)                                                         \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__,        \
                    __LINE__, #cond);                                       \
            test_failed_now_ = 1;                                           \
        }                                                                   \
    } while (0)

#define CHECK_MSG(cond, ...)                                                \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed: ", __FILE__,        \
                    __LINE__, #cond);                                       \
            fprintf(stderr, __VA_ARGS__);                                   \
            fputc('\n', stderr);                                            \
            test_failed_now_ = 1;                                           \
        }                                                                   \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                               \
    do {                                                                    \
        double a_ = (double)(a), b_ = (double)(b);                          \
        if (!(fabs(a_ - b_) <= (tol))) {                                    \
            fprintf(stderr, "  %s:%d: CHECK_NEAR(%s, %s) failed: %g vs %g " \
                    "(tol %g)\n", __FILE__, __LINE__, #a, #b, a_, b_,       \
                    (double)(tol));                                         \
            test_failed_now_ = 1;                                           \
        }                                                                   \
    } while (0)

/* Runs the registered tests; returns the process exit status. */
static inline int run_tests_(void) {
    int passed = 0, failed = 0;
    const char *only = getenv("GLM_TEST_ONLY");  /* a test name: run that one alone */
    for (int i = 0; i < test_count_; i++) {
        if (only && *only && strcmp(only, test_list_[i].name)) continue;
        test_failed_now_ = 0;
        fprintf(stderr, "[ RUN  ] %s\n", test_list_[i].name);
        test_list_[i].fn();
        fprintf(stderr, "[ %s ] %s\n", test_failed_now_ ? "FAIL" : " OK ", test_list_[i].name);
        if (test_failed_now_) failed++; else passed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
#define RUN_TESTS() int main(void) { return run_tests_(); }

/* A scratch directory /tmp/<prefix>-<pid> for tests that write files: created before
 * the tests run and removed after. */
static char test_tmp[256] __attribute__((unused));
#define RUN_TESTS_IN_TMP(prefix)                                            \
    int main(void) {                                                        \
        snprintf(test_tmp, sizeof test_tmp, "/tmp/%s-%d", prefix, (int)getpid()); \
        mkdir(test_tmp, 0755);                                              \
        int rc_ = run_tests_();                                             \
        char cmd_[300];                                                     \
        snprintf(cmd_, sizeof cmd_, "rm -rf '%s'", test_tmp);               \
        if (system(cmd_)) fprintf(stderr, "cannot remove %s\n", test_tmp);  \
        return rc_;                                                         \
    }

#endif
