/* test-comm.c - the local communicator with 1, 2, 4 and 8 ranks as threads: all-reduce
 * sums bitwise equal to the serial sum in rank order (float32 and BF16), all-gather, broadcast,
 * barrier, a thousand small collectives in a row, and failures (an injected failure on
 * rank 3, a rank that never arrives, a count mismatch, a rank reporting its own error)
 * that reach every rank as an error naming the failed rank within a bounded time; and the
 * start of a world of several processes (RANK/WORLD_SIZE/LOCAL_RANK, the file and TCP
 * rendezvous, with ranks as threads). */
#include "comm.h"
#include "internal.h"
#include "test.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <time.h>

static const int rank_counts[] = { 1, 2, 4, 8 };
static const size_t sizes[] = { 1, 5120, 64 * 5120, 1237 };

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

/* Deterministic values of varied magnitude, so the order of summation shows in the bits. */
static float value(int rank, size_t i) {
    uint64_t x = (uint64_t)(rank + 1) * 0x9e3779b97f4a7c15ull ^ (uint64_t)(i + 1) * 0xbf58476d1ce4e5b9ull;
    x ^= x >> 31; x *= 0x94d049bb133111ebull; x ^= x >> 29;
    float u = (float)((x >> 40) * (1.0 / 16777216.0)) * 2.f - 1.f;
    return ldexpf(u, (int)(x % 24) - 8);
}

/* ---- running a function on every rank, one thread each ---- */
typedef int (*rank_fn)(glm_comm *c, void *arg);
typedef struct {
    glm_comm *c;
    rank_fn fn;
    void *arg;
    int rc;
    char msg[1024];
    double seconds;
} job;

static void *job_main(void *p) {
    job *j = p;
    double t0 = now_s();
    j->rc = j->fn(j->c, j->arg);
    j->seconds = now_s() - t0;
    snprintf(j->msg, sizeof j->msg, "%s", j->rc ? glm_last_error() : "");
    return NULL;
}

/* Runs fn on every rank of g in its own thread; fills jobs[n]. */
static void run_ranks(glm_comm_group *g, int n, rank_fn fn, void *arg, job *jobs) {
    pthread_t th[GLM_COMM_MAX_RANKS];
    for (int i = 0; i < n; i++) {
        jobs[i] = (job){ .c = glm_comm_get(g, i), .fn = fn, .arg = arg };
        pthread_create(&th[i], NULL, job_main, &jobs[i]);
    }
    for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
}

static glm_comm_group *make_group(int n, double timeout_s, int fail_rank, int fail_after) {
    glm_comm_params p = glm_comm_default_params();
    p.n_ranks = n;
    p.timeout_s = timeout_s;
    p.fail_rank = fail_rank;
    p.fail_after = fail_after;
    glm_comm_group *g = NULL;
    int rc = glm_comm_group_new(&p, &g);
    CHECK_MSG(rc == 0 && g, "group of %d: %s", n, glm_last_error());
    return g;
}

/* ---- all-reduce ---- */
typedef struct {
    size_t n;
    glm_comm_dtype dt;
    void *bufs[GLM_COMM_MAX_RANKS];
} ar_arg;

static int ar_rank(glm_comm *c, void *arg) {
    ar_arg *a = arg;
    return glm_comm_all_reduce(c, a->bufs[glm_comm_rank(c)], a->n, a->dt, NULL);
}

TEST(all_reduce_f32_equals_serial_sum_bitwise) {
    for (size_t ni = 0; ni < sizeof rank_counts / sizeof *rank_counts; ni++) {
        int N = rank_counts[ni];
        glm_comm_group *g = make_group(N, 10, -1, 0);
        if (!g) return;
        for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
            size_t n = sizes[si];
            ar_arg a = { .n = n, .dt = GLM_COMM_F32 };
            float *want = malloc(n * sizeof *want);
            for (size_t i = 0; i < n; i++) {
                float s = value(0, i);
                for (int r = 1; r < N; r++) s += value(r, i);
                want[i] = s;
            }
            for (int r = 0; r < N; r++) {
                float *b = malloc(n * sizeof *b);
                for (size_t i = 0; i < n; i++) b[i] = value(r, i);
                a.bufs[r] = b;
            }
            job jobs[GLM_COMM_MAX_RANKS];
            run_ranks(g, N, ar_rank, &a, jobs);
            for (int r = 0; r < N; r++) {
                CHECK_MSG(jobs[r].rc == 0, "N=%d n=%zu rank %d: %s", N, n, r, jobs[r].msg);
                CHECK_MSG(memcmp(a.bufs[r], want, n * sizeof *want) == 0, "N=%d n=%zu rank %d differs from the serial sum", N, n, r);
                free(a.bufs[r]);
            }
            free(want);
        }
        glm_comm_group_free(g);
    }
}

TEST(all_reduce_bf16_sums_in_f32_rounds_once) {
    for (size_t ni = 0; ni < sizeof rank_counts / sizeof *rank_counts; ni++) {
        int N = rank_counts[ni];
        size_t n = 5120 + 3;
        glm_comm_group *g = make_group(N, 10, -1, 0);
        if (!g) return;
        ar_arg a = { .n = n, .dt = GLM_COMM_BF16 };
        uint16_t *want = malloc(n * sizeof *want);
        for (size_t i = 0; i < n; i++) {
            float s = glm_bf16_to_f32(glm_f32_to_bf16(value(0, i)));
            for (int r = 1; r < N; r++) s += glm_bf16_to_f32(glm_f32_to_bf16(value(r, i)));
            want[i] = glm_f32_to_bf16(s);
        }
        for (int r = 0; r < N; r++) {
            uint16_t *b = malloc(n * sizeof *b);
            for (size_t i = 0; i < n; i++) b[i] = glm_f32_to_bf16(value(r, i));
            a.bufs[r] = b;
        }
        job jobs[GLM_COMM_MAX_RANKS];
        run_ranks(g, N, ar_rank, &a, jobs);
        for (int r = 0; r < N; r++) {
            CHECK_MSG(jobs[r].rc == 0, "N=%d rank %d: %s", N, r, jobs[r].msg);
            CHECK_MSG(memcmp(a.bufs[r], want, n * sizeof *want) == 0, "N=%d rank %d differs", N, r);
            free(a.bufs[r]);
        }
        free(want);
        glm_comm_group_free(g);
    }
}

/* ---- all-gather ---- */
static int ag_rank(glm_comm *c, void *arg) {
    size_t n = *(size_t *)arg;
    int r = glm_comm_rank(c), N = glm_comm_size(c);
    float *send = malloc(n * sizeof *send), *recv = malloc(n * N * sizeof *recv);
    for (size_t i = 0; i < n; i++) send[i] = value(r, i);
    int rc = glm_comm_all_gather(c, send, recv, n, GLM_COMM_F32, NULL);
    for (int q = 0; q < N && !rc; q++)
        for (size_t i = 0; i < n && !rc; i++)
            if (memcmp(&recv[q * n + i], &(float){ value(q, i) }, sizeof(float)))
                rc = glm_err(GLM_ERR_ARG, "rank %d: recv[%d * %zu + %zu] is not rank %d's value", r, q, n, i, q);
    free(send);
    free(recv);
    return rc;
}

TEST(all_gather_in_rank_order) {
    size_t sizes_ag[] = { 3, 18944 };    /* 18944: one rank's lm_head rows at N = 8 */
    for (size_t ni = 0; ni < sizeof rank_counts / sizeof *rank_counts; ni++)
        for (int si = 0; si < 2; si++) {
            int N = rank_counts[ni];
            glm_comm_group *g = make_group(N, 10, -1, 0);
            if (!g) return;
            job jobs[GLM_COMM_MAX_RANKS];
            run_ranks(g, N, ag_rank, &sizes_ag[si], jobs);
            for (int r = 0; r < N; r++) CHECK_MSG(jobs[r].rc == 0, "N=%d rank %d: %s", N, r, jobs[r].msg);
            glm_comm_group_free(g);
        }
    glm_comm_group *g = make_group(2, 10, -1, 0);
    if (!g) return;
    float b[8];
    CHECK(glm_comm_all_gather(glm_comm_get(g, 0), b + 2, b, 2, GLM_COMM_F32, NULL) == GLM_ERR_ARG);
    CHECK_MSG(strstr(glm_last_error(), "overlap"), "'%s'", glm_last_error());
    glm_comm_group_free(g);
}

/* ---- broadcast, barrier, many collectives ---- */
static int bc_rank(glm_comm *c, void *arg) {
    (void)arg;
    int32_t ids[64];
    int r = glm_comm_rank(c);
    for (int rep = 0; rep < 3; rep++) {
        size_t n = rep == 0 ? 1 : rep == 1 ? 64 : 13;
        for (size_t i = 0; i < n; i++) ids[i] = r == 0 ? (int32_t)(151552 - 7 * i - rep) : -1 - r;
        int rc = glm_comm_broadcast_i32(c, ids, n, NULL);
        if (rc) return rc;
        for (size_t i = 0; i < n; i++)
            if (ids[i] != (int32_t)(151552 - 7 * i - rep))
                return glm_err(GLM_ERR_ARG, "rank %d: ids[%zu] = %d after broadcast %d", r, i, ids[i], rep);
    }
    return 0;
}

TEST(broadcast_copies_rank0_ids) {
    for (size_t ni = 0; ni < sizeof rank_counts / sizeof *rank_counts; ni++) {
        int N = rank_counts[ni];
        glm_comm_group *g = make_group(N, 10, -1, 0);
        if (!g) return;
        job jobs[GLM_COMM_MAX_RANKS];
        run_ranks(g, N, bc_rank, NULL, jobs);
        for (int r = 0; r < N; r++) CHECK_MSG(jobs[r].rc == 0, "N=%d rank %d: %s", N, r, jobs[r].msg);
        glm_comm_group_free(g);
    }
}

typedef struct { atomic_int count; int N; } bar_arg;

/* Each round: arrive (count one), barrier, then every rank must see all N arrivals. */
static int bar_rank(glm_comm *c, void *arg) {
    bar_arg *a = arg;
    for (int round = 0; round < 50; round++) {
        atomic_fetch_add(&a->count, 1);
        if (glm_comm_rank(c) == round % a->N) {    /* one rank comes late each round */
            struct timespec t = { 0, 200000 };
            nanosleep(&t, NULL);
        }
        int rc = glm_comm_barrier(c, NULL);
        if (rc) return rc;
        int seen = atomic_load(&a->count);
        if (seen < (round + 1) * a->N)
            return glm_err(GLM_ERR_ARG, "rank %d passed barrier %d having seen %d arrivals", glm_comm_rank(c), round, seen);
        if ((rc = glm_comm_barrier(c, NULL))) return rc;    /* nobody starts the next round early */
    }
    return 0;
}

TEST(barrier_waits_for_every_rank) {
    for (size_t ni = 0; ni < sizeof rank_counts / sizeof *rank_counts; ni++) {
        int N = rank_counts[ni];
        glm_comm_group *g = make_group(N, 10, -1, 0);
        if (!g) return;
        bar_arg a = { .N = N };
        atomic_init(&a.count, 0);
        job jobs[GLM_COMM_MAX_RANKS];
        run_ranks(g, N, bar_rank, &a, jobs);
        for (int r = 0; r < N; r++) CHECK_MSG(jobs[r].rc == 0, "N=%d rank %d: %s", N, r, jobs[r].msg);
        glm_comm_group_free(g);
    }
}

/* A thousand small all-reduces, each checked: rank r contributes r + k + i. */
static int many_rank(glm_comm *c, void *arg) {
    int N = *(int *)arg, r = glm_comm_rank(c);
    float b[7];
    for (int k = 0; k < 1000; k++) {
        for (int i = 0; i < 7; i++) b[i] = (float)(r + k + i);
        int rc = glm_comm_all_reduce(c, b, 7, GLM_COMM_F32, NULL);
        if (rc) return rc;
        for (int i = 0; i < 7; i++)
            if (b[i] != (float)(N * (k + i) + N * (N - 1) / 2))
                return glm_err(GLM_ERR_ARG, "rank %d, all-reduce %d: b[%d] = %g", r, k, i, b[i]);
    }
    return 0;
}

TEST(thousand_small_all_reduces) {
    for (size_t ni = 0; ni < sizeof rank_counts / sizeof *rank_counts; ni++) {
        int N = rank_counts[ni];
        glm_comm_group *g = make_group(N, 10, -1, 0);
        if (!g) return;
        job jobs[GLM_COMM_MAX_RANKS];
        run_ranks(g, N, many_rank, &N, jobs);
        for (int r = 0; r < N; r++) CHECK_MSG(jobs[r].rc == 0, "N=%d rank %d: %s", N, r, jobs[r].msg);
        glm_comm_group_free(g);
    }
}

/* ---- failures ---- */

/* Runs 10 all-reduces and a barrier; returns the first error (its index in arg's slot). */
typedef struct { int first_bad[GLM_COMM_MAX_RANKS]; int second_rc[GLM_COMM_MAX_RANKS]; } fail_arg;

static int fail_rank_fn(glm_comm *c, void *arg) {
    fail_arg *a = arg;
    int r = glm_comm_rank(c);
    float b[5120];
    for (int k = 0; k < 10; k++) {
        for (int i = 0; i < 5120; i++) b[i] = 1.f;
        int rc = glm_comm_all_reduce(c, b, 5120, GLM_COMM_F32, NULL);
        if (rc) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", glm_last_error());
            a->first_bad[r] = k;
            a->second_rc[r] = glm_comm_barrier(c, NULL);    /* the failure stays */
            glm_err(rc, "%s", msg);
            return rc;
        }
    }
    return 0;
}

TEST(injected_failure_on_rank3_reaches_every_rank) {
    int counts[] = { 4, 8 };
    for (int ci = 0; ci < 2; ci++) {
        int N = counts[ci];
        glm_comm_group *g = make_group(N, 5, 3, 4);
        if (!g) return;
        fail_arg a;
        job jobs[GLM_COMM_MAX_RANKS];
        double t0 = now_s();
        run_ranks(g, N, fail_rank_fn, &a, jobs);
        double took = now_s() - t0;
        for (int r = 0; r < N; r++) {
            CHECK_MSG(jobs[r].rc == GLM_ERR_IO, "N=%d rank %d: rc %d", N, r, jobs[r].rc);
            CHECK_MSG(strstr(jobs[r].msg, "rank 3 failed: injected failure"), "N=%d rank %d: '%s'", N, r, jobs[r].msg);
            CHECK_MSG(a.first_bad[r] == 4, "N=%d rank %d failed at all-reduce %d", N, r, a.first_bad[r]);
            CHECK(a.second_rc[r] == GLM_ERR_IO);
        }
        /* the failure wakes the waiting ranks: no rank waits for the 5 s timeout */
        CHECK_MSG(took < 1.0, "N=%d: the failure took %.2f s to reach every rank", N, took);
        if (N == 8) fprintf(stderr, "  rank 0 sees: %s\n", jobs[0].msg);
        glm_comm_group_free(g);
    }
}

/* Rank 2 never comes to the third all-reduce. */
static int absent_fn(glm_comm *c, void *arg) {
    (void)arg;
    float b[16] = { 0 };
    for (int k = 0; k < 3; k++) {
        if (glm_comm_rank(c) == 2 && k == 2) return 0;
        int rc = glm_comm_all_reduce(c, b, 16, GLM_COMM_F32, NULL);
        if (rc) return rc;
    }
    return 0;
}

TEST(absent_rank_times_out_naming_it) {
    glm_comm_group *g = make_group(4, 0.2, -1, 0);
    if (!g) return;
    job jobs[GLM_COMM_MAX_RANKS];
    double t0 = now_s();
    run_ranks(g, 4, absent_fn, NULL, jobs);
    double took = now_s() - t0;
    CHECK(jobs[2].rc == 0);
    for (int r = 0; r < 4; r++) {
        if (r == 2) continue;
        CHECK_MSG(jobs[r].rc == GLM_ERR_IO, "rank %d: rc %d", r, jobs[r].rc);
        CHECK_MSG(strstr(jobs[r].msg, "rank 2 failed: did not reach the all-reduce within 0.2 s (late ranks: 2)"),
                  "rank %d: '%s'", r, jobs[r].msg);
    }
    CHECK_MSG(took >= 0.2 && took < 2.0, "took %.2f s", took);
    glm_comm_group_free(g);
}

/* Rank 1 passes 4 values where the others pass 5. */
static int mismatch_fn(glm_comm *c, void *arg) {
    (void)arg;
    float b[5] = { 1, 2, 3, 4, 5 };
    return glm_comm_all_reduce(c, b, glm_comm_rank(c) == 1 ? 4 : 5, GLM_COMM_F32, NULL);
}

TEST(count_mismatch_names_the_rank) {
    glm_comm_group *g = make_group(3, 5, -1, 0);
    if (!g) return;
    job jobs[GLM_COMM_MAX_RANKS];
    run_ranks(g, 3, mismatch_fn, NULL, jobs);
    for (int r = 0; r < 3; r++) {
        CHECK_MSG(jobs[r].rc == GLM_ERR_ARG, "rank %d: rc %d", r, jobs[r].rc);
        CHECK_MSG(strstr(jobs[r].msg, "rank 1 failed: passed 4 f32 values to the all-reduce, rank 0 passed 5 f32"),
                  "rank %d: '%s'", r, jobs[r].msg);
    }
    glm_comm_group_free(g);
}

/* Rank 5 reports its own error (as a backend would) instead of its second all-reduce. */
static int own_error_fn(glm_comm *c, void *arg) {
    (void)arg;
    float b[8] = { 0 };
    for (int k = 0; k < 3; k++) {
        if (glm_comm_rank(c) == 5 && k == 1) return glm_comm_fail(c, GLM_ERR_OOM, "cudaMalloc: out of memory");
        int rc = glm_comm_all_reduce(c, b, 8, GLM_COMM_F32, NULL);
        if (rc) return rc;
    }
    return 0;
}

TEST(rank_error_reaches_every_rank_with_its_status) {
    glm_comm_group *g = make_group(8, 5, -1, 0);
    if (!g) return;
    job jobs[GLM_COMM_MAX_RANKS];
    run_ranks(g, 8, own_error_fn, NULL, jobs);
    for (int r = 0; r < 8; r++) {
        CHECK_MSG(jobs[r].rc == GLM_ERR_OOM, "rank %d: rc %d", r, jobs[r].rc);
        CHECK_MSG(strstr(jobs[r].msg, "rank 5 failed: cudaMalloc: out of memory"), "rank %d: '%s'", r, jobs[r].msg);
        CHECK_MSG(jobs[r].seconds < 1.0, "rank %d took %.2f s", r, jobs[r].seconds);
    }
    glm_comm_group_free(g);
}

/* ---- several processes: the environment and the rendezvous ---- */
TEST(dist_environment) {
    glm_comm_dist d;
    unsetenv("RANK"); unsetenv("WORLD_SIZE"); unsetenv("LOCAL_RANK");
    CHECK(glm_comm_dist_from_env(&d) == 0 && d.rank == 0 && d.world_size == 1 && d.local_rank == 0);
    setenv("RANK", "11", 1); setenv("WORLD_SIZE", "16", 1); setenv("LOCAL_RANK", "3", 1);
    CHECK(glm_comm_dist_from_env(&d) == 0 && d.rank == 11 && d.world_size == 16 && d.local_rank == 3);
    setenv("RANK", "16", 1);
    CHECK(glm_comm_dist_from_env(&d) == GLM_ERR_ARG);
    CHECK_MSG(strstr(glm_last_error(), "RANK='16'"), "'%s'", glm_last_error());
    setenv("RANK", "1x", 1);
    CHECK(glm_comm_dist_from_env(&d) == GLM_ERR_ARG);
    unsetenv("RANK");
    CHECK(glm_comm_dist_from_env(&d) == GLM_ERR_ARG);
    CHECK_MSG(strstr(glm_last_error(), "RANK is not"), "'%s'", glm_last_error());
    unsetenv("WORLD_SIZE"); unsetenv("LOCAL_RANK");
}

typedef struct {
    const char *spec;
    int rank, world;
    double timeout_s;
    uint8_t id[GLM_COMM_ID_BYTES];
    int rc;
    char msg[512];
} rdv_job;

static void *rdv_main(void *p) {
    rdv_job *j = p;
    j->rc = glm_comm_rendezvous(j->spec, j->rank, j->world, j->timeout_s, j->id);
    snprintf(j->msg, sizeof j->msg, "%s", j->rc ? glm_last_error() : "");
    return NULL;
}

/* Runs the rendezvous for ranks [0, n) of a world of world ranks (rank 0 holds the id
 * 0, 7, 14, ...); skip: a rank that does not take part. */
static void rendezvous(const char *spec, int n, int world, double timeout_s, int skip, rdv_job *jobs) {
    pthread_t th[16];
    for (int r = 0; r < n; r++) {
        jobs[r] = (rdv_job){ .spec = spec, .rank = r, .world = world, .timeout_s = timeout_s };
        for (int i = 0; i < GLM_COMM_ID_BYTES; i++) jobs[r].id[i] = r == 0 ? (uint8_t)(7 * i) : 0;
        if (r != skip) pthread_create(&th[r], NULL, rdv_main, &jobs[r]);
    }
    for (int r = 0; r < n; r++)
        if (r != skip) pthread_join(th[r], NULL);
}

static int same_id(const rdv_job *j) {
    for (int i = 0; i < GLM_COMM_ID_BYTES; i++)
        if (j->id[i] != (uint8_t)(7 * i)) return 0;
    return 1;
}

TEST(rendezvous_file) {
    char spec[300], path[280], ack[300];
    snprintf(path, sizeof path, "/tmp/glm-comm-test-%d.id", (int)getpid());
    snprintf(spec, sizeof spec, "file:%s", path);
    rdv_job j[8];
    rendezvous(spec, 8, 8, 5, -1, j);
    for (int r = 0; r < 8; r++) {
        CHECK_MSG(j[r].rc == 0, "rank %d: %s", r, j[r].msg);
        CHECK_MSG(same_id(&j[r]), "rank %d has another id", r);
    }
    struct stat st;
    snprintf(ack, sizeof ack, "%s.ack.3", path);
    CHECK(stat(path, &st) != 0 && stat(ack, &st) != 0);    /* cleaned up */
    /* a stale file stops rank 0 */
    FILE *f = fopen(path, "w");
    if (f) fclose(f);
    rendezvous(spec, 1, 2, 0.2, -1, j);
    CHECK(j[0].rc == GLM_ERR_IO);
    CHECK_MSG(strstr(j[0].msg, "already exists"), "'%s'", j[0].msg);
    unlink(path);
    /* rank 0 absent: rank 1 times out naming the file */
    double t0 = now_s();
    rendezvous(spec, 2, 2, 0.2, 0, j);
    CHECK(j[1].rc == GLM_ERR_IO && now_s() - t0 < 2);
    CHECK_MSG(strstr(j[1].msg, "rank 0 did not write it within 0.2 s"), "'%s'", j[1].msg);
    /* rank 2 absent: rank 0 names it */
    rendezvous(spec, 3, 3, 0.3, 2, j);
    CHECK(j[1].rc == 0);
    CHECK_MSG(j[0].rc == GLM_ERR_IO && strstr(j[0].msg, "rank 2 did not answer"), "'%s'", j[0].msg);
    CHECK(stat(path, &st) != 0);
}

/* Returns a TCP port that was free a moment ago. */
static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof a;
    int port = 0;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0) close(fd);
    return port;
}

TEST(rendezvous_tcp) {
    char spec[64];
    snprintf(spec, sizeof spec, "tcp:127.0.0.1:%d", free_port());
    rdv_job j[8];
    rendezvous(spec, 8, 8, 5, -1, j);
    for (int r = 0; r < 8; r++) {
        CHECK_MSG(j[r].rc == 0, "rank %d: %s", r, j[r].msg);
        CHECK_MSG(same_id(&j[r]), "rank %d has another id", r);
    }
    snprintf(spec, sizeof spec, "tcp:localhost:%d", free_port());
    double t0 = now_s();
    rendezvous(spec, 4, 4, 0.3, 2, j);    /* rank 2 never connects */
    CHECK(now_s() - t0 < 3);
    CHECK(j[1].rc == 0 && j[3].rc == 0 && same_id(&j[3]));
    CHECK_MSG(j[0].rc == GLM_ERR_IO && strstr(j[0].msg, "1 of 3 ranks did not connect within 0.3 s (ranks: 2)"),
              "'%s'", j[0].msg);
    rendezvous(spec, 2, 2, 0.2, 0, j);    /* rank 0 never listens */
    CHECK_MSG(j[1].rc == GLM_ERR_IO && strstr(j[1].msg, "rank 1 could not get the id from rank 0"), "'%s'", j[1].msg);
    uint8_t id[GLM_COMM_ID_BYTES] = { 0 };
    CHECK(glm_comm_rendezvous("nfs:/x", 1, 2, 1, id) == GLM_ERR_ARG);
    CHECK(glm_comm_rendezvous("tcp:host", 1, 2, 1, id) == GLM_ERR_ARG);
    CHECK(glm_comm_rendezvous("tcp:host:99999", 1, 2, 1, id) == GLM_ERR_ARG);
    CHECK(glm_comm_rendezvous("file:", 1, 2, 1, id) == GLM_ERR_ARG);
    CHECK(glm_comm_rendezvous("tcp:h:1", 2, 2, 1, id) == GLM_ERR_ARG);
    CHECK(glm_comm_rendezvous("tcp:h:1", 0, 1, 1, id) == 0);     /* a world of one needs nobody */
}

/* ---- parameters ---- */
TEST(environment_and_bad_parameters) {
    setenv("GLM_COMM_FAIL_RANK", "3", 1);
    setenv("GLM_COMM_FAIL_AFTER", "7", 1);
    setenv("GLM_COMM_TIMEOUT_S", "2.5", 1);
    glm_comm_params p = glm_comm_default_params();
    CHECK(p.fail_rank == 3 && p.fail_after == 7 && p.timeout_s == 2.5);
    setenv("GLM_COMM_TIMEOUT_S", "soon", 1);
    p = glm_comm_default_params();
    p.n_ranks = 4;
    glm_comm_group *g = NULL;
    CHECK(glm_comm_group_new(&p, &g) == GLM_ERR_ARG && !g);
    CHECK_MSG(strstr(glm_last_error(), "GLM_COMM_TIMEOUT_S='soon'"), "'%s'", glm_last_error());
    unsetenv("GLM_COMM_TIMEOUT_S");
    setenv("GLM_COMM_FAIL_RANK", "three", 1);
    p = glm_comm_default_params();
    CHECK(glm_comm_group_new(&p, &g) == GLM_ERR_ARG && !g);
    CHECK_MSG(strstr(glm_last_error(), "GLM_COMM_FAIL_RANK='three'"), "'%s'", glm_last_error());
    unsetenv("GLM_COMM_FAIL_RANK");
    unsetenv("GLM_COMM_FAIL_AFTER");
    p = glm_comm_default_params();
    CHECK(p.fail_rank == -1 && p.fail_after == 0 && p.timeout_s == 60);

    p.n_ranks = 0;
    CHECK(glm_comm_group_new(&p, &g) == GLM_ERR_ARG && !g);
    p.n_ranks = GLM_COMM_MAX_RANKS + 1;
    CHECK(glm_comm_group_new(&p, &g) == GLM_ERR_ARG && !g);
    p.n_ranks = 2;
    p.world_size = 4;     /* the local kind has no other processes */
    CHECK(glm_comm_group_new(&p, &g) == GLM_ERR_ARG && !g);
    CHECK_MSG(strstr(glm_last_error(), "world 4"), "'%s'", glm_last_error());
    p.world_size = 0;
    p.fail_rank = 2;      /* outside a world of 2 */
    CHECK(glm_comm_group_new(&p, &g) == GLM_ERR_ARG && !g);
    p.fail_rank = -1;
    CHECK(glm_comm_group_new(&p, &g) == 0 && g);
    glm_comm *c = glm_comm_get(g, 0);
    CHECK(c && glm_comm_get(g, 2) == NULL && glm_comm_rank(c) == 0 && glm_comm_size(c) == 2);
    CHECK(!strcmp(glm_comm_kind_name(c), "local"));
    CHECK(glm_comm_all_reduce(c, NULL, 4, GLM_COMM_F32, NULL) == GLM_ERR_ARG);
    float f = 0;
    CHECK(glm_comm_all_reduce(c, &f, 1, (glm_comm_dtype)9, NULL) == GLM_ERR_ARG);
    glm_comm_group_free(g);
#ifndef GLM_CUDA
    p = glm_comm_default_params();
    p.kind = GLM_COMM_NCCL;
    CHECK(glm_comm_group_new(&p, &g) == GLM_ERR_NOT_IMPLEMENTED && !g);
    CHECK_MSG(strstr(glm_last_error(), "not implemented"), "'%s'", glm_last_error());
    uint8_t id[GLM_COMM_ID_BYTES];
    CHECK(glm_comm_unique_id(id) == GLM_ERR_NOT_IMPLEMENTED);
#endif
}

RUN_TESTS()
