/* test-gpu-comm.c - the NCCL communicator on the GPUs this machine has: one rank through
 * init, a graph-captured all-reduce, a broadcast, an all-gather, and teardown; one rank a
 * GPU on every visible GPU (skipped with one); eight ranks sharing GPU 0 (NCCL refuses two
 * ranks of a communicator on one device, so they sum through host memory: bitwise equal
 * to the serial sum); an injected failure on rank 3 (or the last rank) and a rank that
 * stops coming, each ending every rank's collective or wait with an error naming it,
 * within a bounded time. Values are small integers where NCCL sums, so every sum is exact
 * whatever its order. */
#include "comm.h"
#include "internal.h"
#include "test.h"

#include <cuda_runtime_api.h>
#include <pthread.h>
#include <time.h>

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static int n_gpus(void) {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

/* Skips the calling test when the build has no NCCL (one GPU a rank needs it). */
#ifdef GLM_NCCL
#define NEED_NCCL() do { } while (0)
#else
#define NEED_NCCL() SKIP("built without GLM_NCCL: one GPU a rank needs NCCL (-DGLM_NCCL, -lnccl)")
#endif

/* Value of element i on rank r: a small integer (exact in any summation order) or,
 * with varied, a float of varied magnitude (the order shows in the bits). */
static float value(int r, size_t i, int varied) {
    uint64_t x = (uint64_t)(r + 1) * 0x9e3779b97f4a7c15ull ^ (uint64_t)(i + 1) * 0xbf58476d1ce4e5b9ull;
    x ^= x >> 31; x *= 0x94d049bb133111ebull; x ^= x >> 29;
    if (!varied) return (float)((int)(x % 201) - 100);
    float u = (float)((x >> 40) * (1.0 / 16777216.0)) * 2.f - 1.f;
    return ldexpf(u, (int)(x % 24) - 8);
}

static glm_comm_group *make_group_timeout(int n, const int *devices, int fail_rank, int fail_after, double timeout_s) {
    glm_comm_params p = glm_comm_default_params();
    p.kind = GLM_COMM_NCCL;
    p.n_ranks = n;
    p.devices = devices;
    p.timeout_s = timeout_s;
    p.fail_rank = fail_rank;
    p.fail_after = fail_after;
    glm_comm_group *g = NULL;
    int rc = glm_comm_group_new(&p, &g);
    CHECK_MSG(rc == 0 && g, "group of %d: %s", n, glm_last_error());
    return g;
}

static glm_comm_group *make_group(int n, const int *devices, int fail_rank, int fail_after) {
    return make_group_timeout(n, devices, fail_rank, fail_after, 20);
}

/* ---- one thread a rank ---- */
typedef struct {
    glm_comm *c;
    int device, n_ranks, varied, capture, reps;
    int absent_at;             /* >= 0: this rank stops before that all-reduce, without an error */
    size_t n;
    int rc;                    /* first error */
    int bad_at;                /* collective index of the first error, -1 if none */
    char msg[1024];
    double seconds;
    int wrong;                 /* elements that differ from the expected sum */
} rank_job;

/* Runs reps all-reduces of n floats (captured in a graph when capture), a broadcast and
 * an all-gather on the rank's device, checking every result (sums against the serial sum). */
static void *rank_main(void *p) {
    rank_job *j = p;
    double t0 = now_s();
    int r = glm_comm_rank(j->c), N = j->n_ranks;
    j->bad_at = -1;
    cudaSetDevice(j->device);
    cudaStream_t st = NULL;
    cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
    float *h = malloc(j->n * sizeof *h), *want = malloc(j->n * sizeof *want), *d = NULL;
    cudaMalloc((void **)&d, j->n * sizeof *d);
    int32_t *ids = NULL, hid[9];
    cudaMalloc((void **)&ids, sizeof hid);
    cudaGraphExec_t exec = NULL;
    for (size_t i = 0; i < j->n; i++) {
        float s = value(0, i, j->varied);
        for (int k = 1; k < N; k++) s += value(k, i, j->varied);
        want[i] = s;
        h[i] = value(r, i, j->varied);
    }
    int rc = 0;
    for (int k = 0; k < j->reps && !rc; k++) {
        if (k == j->absent_at) goto done;
        cudaMemcpyAsync(d, h, j->n * sizeof *d, cudaMemcpyHostToDevice, st);
        if (j->capture) {
            if (!exec) {
                cudaGraph_t graph = NULL;
                cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal);
                rc = glm_comm_all_reduce(j->c, d, j->n, GLM_COMM_F32, st);
                cudaError_t e = cudaStreamEndCapture(st, &graph);
                if (!rc && e == cudaSuccess) e = cudaGraphInstantiate(&exec, graph, 0);
                if (graph) cudaGraphDestroy(graph);
                if (!rc && e != cudaSuccess) rc = glm_err(GLM_ERR_CUDA, "rank %d: capture: %s", r, cudaGetErrorString(e));
            }
            if (!rc && cudaGraphLaunch(exec, st) != cudaSuccess) rc = glm_err(GLM_ERR_CUDA, "rank %d: cudaGraphLaunch", r);
        } else {
            rc = glm_comm_all_reduce(j->c, d, j->n, GLM_COMM_F32, st);
        }
        if (!rc) rc = glm_comm_wait(j->c, st);
        if (rc) { j->bad_at = k; break; }
        float *got = malloc(j->n * sizeof *got);
        cudaMemcpy(got, d, j->n * sizeof *got, cudaMemcpyDeviceToHost);
        for (size_t i = 0; i < j->n; i++) j->wrong += memcmp(&got[i], &want[i], sizeof *got) != 0;
        free(got);
    }
    if (!rc) {
        for (int i = 0; i < 9; i++) hid[i] = r == 0 ? 151552 - 3 * i : -1;
        cudaMemcpyAsync(ids, hid, sizeof hid, cudaMemcpyHostToDevice, st);
        rc = glm_comm_broadcast_i32(j->c, ids, 9, st);
        /* all-gather of 37 values a rank (an uneven lm_head slice) */
        float *gs = NULL, *gr = NULL, hs[37], *hr = malloc(37 * N * sizeof *hr);
        cudaMalloc((void **)&gs, sizeof hs);
        cudaMalloc((void **)&gr, 37 * N * sizeof *gr);
        for (int i = 0; i < 37; i++) hs[i] = value(r, i, 1);
        cudaMemcpyAsync(gs, hs, sizeof hs, cudaMemcpyHostToDevice, st);
        if (!rc) rc = glm_comm_all_gather(j->c, gs, gr, 37, GLM_COMM_F32, st);
        if (!rc) rc = glm_comm_barrier(j->c, st);
        if (rc) j->bad_at = j->reps;
        cudaMemcpy(hid, ids, sizeof hid, cudaMemcpyDeviceToHost);
        cudaMemcpy(hr, gr, 37 * N * sizeof *hr, cudaMemcpyDeviceToHost);
        for (int i = 0; i < 9 && !rc; i++) j->wrong += hid[i] != 151552 - 3 * i;
        for (int q = 0; q < N && !rc; q++)
            for (int i = 0; i < 37; i++) j->wrong += memcmp(&hr[q * 37 + i], &(float){ value(q, i, 1) }, 4) != 0;
        cudaFree(gs);
        cudaFree(gr);
        free(hr);
    }
done:
    j->rc = rc;
    snprintf(j->msg, sizeof j->msg, "%s", rc ? glm_last_error() : "");
    if (exec) cudaGraphExecDestroy(exec);
    cudaStreamSynchronize(st);
    cudaFree(d);
    cudaFree(ids);
    cudaStreamDestroy(st);
    free(h);
    free(want);
    j->seconds = now_s() - t0;
    return NULL;
}

/* Runs rank_main on every rank of g (rank absent stops before its all-reduce absent_at);
 * fills jobs[n]. */
static void run_ranks_absent(glm_comm_group *g, int n, const int *devices, size_t count, int varied, int capture,
                             int reps, int absent, int absent_at, rank_job *jobs) {
    pthread_t th[GLM_COMM_MAX_RANKS];
    for (int i = 0; i < n; i++) {
        jobs[i] = (rank_job){ .c = glm_comm_get(g, i), .device = devices[i], .n_ranks = n, .varied = varied,
                              .capture = capture, .reps = reps, .n = count, .absent_at = i == absent ? absent_at : -1 };
        pthread_create(&th[i], NULL, rank_main, &jobs[i]);
    }
    for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
}

static void run_ranks(glm_comm_group *g, int n, const int *devices, size_t count, int varied, int capture,
                      int reps, rank_job *jobs) {
    run_ranks_absent(g, n, devices, count, varied, capture, reps, -1, -1, jobs);
}

TEST(nccl_one_rank_graph_captured) {
    NEED_NCCL();
    if (n_gpus() < 1) SKIP("no GPU");
    int dev[1] = { 0 };
    glm_comm_group *g = make_group(1, dev, -1, 0);
    if (!g) return;
    CHECK(!strcmp(glm_comm_kind_name(glm_comm_get(g, 0)), "nccl"));
    rank_job j[1];
    run_ranks(g, 1, dev, 5120, 1, 1, 3, j);
    CHECK_MSG(j[0].rc == 0, "%s", j[0].msg);
    CHECK_MSG(j[0].wrong == 0, "%d elements wrong", j[0].wrong);
    glm_comm_group_free(g);
}

TEST(nccl_one_rank_a_gpu_graph_captured) {
    NEED_NCCL();
    int N = n_gpus();
    if (N < 2) SKIP("fewer than 2 GPUs");
    if (N > 8) N = 8;
    int dev[8];
    for (int i = 0; i < N; i++) dev[i] = i;
    glm_comm_group *g = make_group(N, dev, -1, 0);
    if (!g) return;
    rank_job j[8];
    run_ranks(g, N, dev, 64 * 5120, 0, 1, 3, j);
    for (int r = 0; r < N; r++) {
        CHECK_MSG(j[r].rc == 0, "rank %d: %s", r, j[r].msg);
        CHECK_MSG(j[r].wrong == 0, "rank %d: %d elements wrong", r, j[r].wrong);
    }
    glm_comm_group_free(g);
}

TEST(eight_ranks_share_gpu0_serial_sum_bitwise) {
    if (n_gpus() < 1) SKIP("no GPU");
    int dev[8] = { 0 };
    glm_comm_group *g = make_group(8, dev, -1, 0);
    if (!g) return;
    CHECK(!strcmp(glm_comm_kind_name(glm_comm_get(g, 0)), "shared-gpu"));
    size_t sizes[] = { 1, 5120, 64 * 5120, 1237 };
    for (int s = 0; s < 4; s++) {
        rank_job j[8];
        run_ranks(g, 8, dev, sizes[s], 1, 0, 2, j);
        for (int r = 0; r < 8; r++) {
            CHECK_MSG(j[r].rc == 0, "n=%zu rank %d: %s", sizes[s], r, j[r].msg);
            CHECK_MSG(j[r].wrong == 0, "n=%zu rank %d: %d elements wrong", sizes[s], r, j[r].wrong);
        }
    }
    glm_comm_group_free(g);
}

TEST(shared_gpu_refuses_graph_capture) {
    if (n_gpus() < 1) SKIP("no GPU");
    int dev[2] = { 0, 0 };
    glm_comm_group *g = make_group(2, dev, -1, 0);
    if (!g) return;
    rank_job j[2];
    run_ranks(g, 2, dev, 64, 0, 1, 1, j);
    for (int r = 0; r < 2; r++) {
        CHECK(j[r].rc != 0);
        CHECK_MSG(strstr(j[r].msg, "cannot capture"), "rank %d: '%s'", r, j[r].msg);
    }
    glm_comm_group_free(g);
}

/* Rank fail_rank fails at its third collective (uncaptured: the third all-reduce, so
 * its NCCL peers are left waiting in the kernel until they abort; captured: the barrier
 * after the graph replays); every rank must end with an error naming it. */
static void check_failure(int N, const int *dev, int fail_rank, int capture) {
    glm_comm_group *g = make_group(N, dev, fail_rank, 2);
    if (!g) return;
    rank_job j[8];
    double t0 = now_s();
    run_ranks(g, N, dev, 5120, 0, capture, 6, j);
    double took = now_s() - t0;
    char want[64];
    snprintf(want, sizeof want, "rank %d failed: injected failure", fail_rank);
    for (int r = 0; r < N; r++) {
        CHECK_MSG(j[r].rc != 0 && strstr(j[r].msg, want), "N=%d rank %d: rc %d '%s'", N, r, j[r].rc, j[r].msg);
        CHECK_MSG(j[r].bad_at >= 0, "rank %d did not fail", r);
    }
    CHECK_MSG(took < 10.0, "N=%d: took %.1f s (timeout 20 s)", N, took);
    fprintf(stderr, "  %s, N=%d: rank 0 sees in %.2f s: %s\n", glm_comm_kind_name(glm_comm_get(g, 0)), N, took, j[0].msg);
    glm_comm_group_free(g);
}

TEST(injected_failure_on_rank3_shared_gpu) {
    if (n_gpus() < 1) SKIP("no GPU");
    int dev[8] = { 0 };
    check_failure(8, dev, 3, 0);
}

TEST(injected_failure_nccl) {
    NEED_NCCL();
    int N = n_gpus();
    if (N < 1) SKIP("no GPU");
    if (N > 8) N = 8;
    int dev[8];
    for (int i = 0; i < N; i++) dev[i] = i;
    check_failure(N, dev, N > 3 ? 3 : N - 1, 0);
    check_failure(N, dev, N > 3 ? 3 : N - 1, 1);
}

/* The last rank stops before its second all-reduce: the others, left waiting in NCCL,
 * time out, abort and name it. */
TEST(absent_rank_nccl_times_out_naming_it) {
    NEED_NCCL();
    int N = n_gpus();
    if (N < 2) SKIP("fewer than 2 GPUs");
    if (N > 8) N = 8;
    int dev[8];
    for (int i = 0; i < N; i++) dev[i] = i;
    glm_comm_group *g = make_group_timeout(N, dev, -1, 0, 2.0);
    if (!g) return;
    rank_job j[8];
    double t0 = now_s();
    run_ranks_absent(g, N, dev, 5120, 0, 0, 3, N - 1, 1, j);
    double took = now_s() - t0;
    char want[64];
    snprintf(want, sizeof want, "rank %d failed: did not reach collective 1", N - 1);
    CHECK(j[N - 1].rc == 0);
    for (int r = 0; r < N - 1; r++)
        CHECK_MSG(j[r].rc != 0 && strstr(j[r].msg, want), "rank %d: '%s'", r, j[r].msg);
    CHECK_MSG(took < 10.0, "took %.1f s (timeout 2 s)", took);
    fprintf(stderr, "  N=%d: rank 0 sees in %.2f s: %s\n", N, took, j[0].msg);
    glm_comm_group_free(g);
}

RUN_TESTS()
