/* test.h - the tiny harness every test binary uses: TEST(name) defines a test,
 * CHECK/CHECK_NEAR record failures with file:line, SKIP(reason) leaves a test that
 * cannot run here, RUN_TESTS() runs them all (or those GLM_TEST_ONLY names: a name or
 * a shell pattern such as 'parity_*') and ends with "N passed, N failed, N skipped"
 * and a non-zero exit status on any failure. A filter matching nothing here prints
 * "0 passed, 0 failed, 0 skipped" and exits 0: tests/run-tests.sh fails the run when
 * no binary ran a test. */
#ifndef GLM_TEST_H
#define GLM_TEST_H

#include <fnmatch.h>
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

/* TEST_ASAN: 1 in a build with AddressSanitizer (make SAN=1), else 0. */
#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif
#ifndef TEST_ASAN
#define TEST_ASAN 0
#endif

/* A shell prefix capping what the command after it may allocate to kb KiB, so that a
 * tool allocating before it checks fails fast instead of filling the machine:
 * "ulimit -v kb; ", or under AddressSanitizer (whose shadow memory needs terabytes of
 * address space) its allocator's own limit on one allocation, past which malloc
 * returns NULL. Usage: run_tool(&t, TEST_ULIMIT_V(4000000) "%s/glm-bench ...", ...). */
#if TEST_ASAN
#define TEST_ULIMIT_V(kb)                                                   \
    "export ASAN_OPTIONS=\"${ASAN_OPTIONS:+$ASAN_OPTIONS:}allocator_may_return_null=1:" \
    "max_allocation_size_mb=$((" #kb " / 1024))\"; "
#else
#define TEST_ULIMIT_V(kb) "ulimit -v " #kb "; "
#endif

typedef void (*test_fn)(void);
static struct { const char *name; test_fn fn; } test_list_[512];
static int test_count_, test_failed_now_, test_skipped_now_;

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

/* Marks the current test skipped (unless a check already failed) with the reason
 * why, and returns from the enclosing function: SKIP("GLM_TEST_QUICK is set"). */
#define SKIP(reason)                                                        \
    do {                                                                    \
        fprintf(stderr, "  %s:%d: skipped: %s\n", __FILE__, __LINE__,      \
                (reason));                                                  \
        test_skipped_now_ = 1;                                              \
        return;                                                             \
    } while (0)

/* Returns 1 when the test called name runs: no GLM_TEST_ONLY, or it matches the name
 * (an exact name or a shell pattern). */
static inline int test_selected_(const char *name) {
    const char *only = getenv("GLM_TEST_ONLY");
    return !only || !*only || !strcmp(only, name) || !fnmatch(only, name, 0);
}

/* Prints the summary line tests/run-tests.sh sums; returns the exit status. */
static inline int test_summary_(int passed, int failed, int skipped) {
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    fflush(stdout);
    return failed ? 1 : 0;
}

/* Runs the registered tests; returns the process exit status. */
static inline int run_tests_(void) {
    int passed = 0, failed = 0, skipped = 0;
    for (int i = 0; i < test_count_; i++) {
        if (!test_selected_(test_list_[i].name)) continue;
        test_failed_now_ = test_skipped_now_ = 0;
        fprintf(stderr, "[ RUN  ] %s\n", test_list_[i].name);
        test_list_[i].fn();
        const char *res = test_failed_now_ ? "FAIL" : test_skipped_now_ ? "SKIP" : " OK ";
        fprintf(stderr, "[ %s ] %s\n", res, test_list_[i].name);
        if (test_failed_now_) failed++;
        else if (test_skipped_now_) skipped++;
        else passed++;
    }
    return test_summary_(passed, failed, skipped);
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

/* GPU tests: float32 activations in every product (the GEMV and tiled kernels at any
 * number of tokens), so that CUDA results differ from the CPU's only in the order of the
 * sums; read when a CUDA context is made. */
static inline void test_f32_paths(int on) {
    if (on) {
        setenv("GLM_CUDA_GEMV_MAX", "100000", 1);
        setenv("GLM_CUDA_MMA_MIN", "100000", 1);
        setenv("GLM_CUDA_GEMV_MMA", "0", 1);
    } else {
        unsetenv("GLM_CUDA_GEMV_MAX");
        unsetenv("GLM_CUDA_MMA_MIN");
        unsetenv("GLM_CUDA_GEMV_MMA");
    }
}

#endif
