/* comm.c - the communicator's shared part (parameters, the host barrier with its
 * timeout, the group's failure state, the injected failure) and the local kind: ranks
 * as threads summing host buffers. The sum of element i is computed by one rank, in
 * rank order, and written to every rank's buffer, so all ranks hold bitwise the same
 * value, equal to the serial sum; the ranks share the elements in N slices, so the
 * work is spread. The NCCL kind lives in comm-cuda.c. */
#include "comm.h"
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define COMM_DEFAULT_TIMEOUT_S 60.0

/* Parses the integer environment variable name into *out; returns 0 if unset, 1 if
 * set and valid, -1 if set and not an integer. */
static int env_int(const char *name, int *out) {
    const char *s = getenv(name);
    if (!s || !*s) return 0;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < INT_MIN || v > INT_MAX) return -1;
    *out = (int)v;
    return 1;
}

glm_comm_params glm_comm_default_params(void) {
    glm_comm_params p = {
        .kind = GLM_COMM_LOCAL, .n_ranks = 1, .world_size = 0, .first_rank = 0,
        .devices = NULL, .unique_id = NULL, .timeout_s = COMM_DEFAULT_TIMEOUT_S,
        .fail_rank = -1, .fail_after = 0,
    };
    const char *t = getenv("GLM_COMM_TIMEOUT_S");
    if (t && *t) {
        char *end;
        double v = strtod(t, &end);
        p.timeout_s = *end || !(v > 0) ? NAN : v;   /* NaN: group_new names the variable */
    }
    if (env_int("GLM_COMM_FAIL_RANK", &p.fail_rank) < 0) p.fail_rank = INT_MIN;
    if (env_int("GLM_COMM_FAIL_AFTER", &p.fail_after) < 0) p.fail_after = INT_MIN;
    return p;
}

/* ---- the failure state and the host barrier ---- */

/* Formats the group's failure as this thread's error for collective what; returns its
 * status. Called with g->mu held. */
static int report_locked(glm_comm *c, const char *what) {
    glm_comm_group *g = c->g;
    return glm_err(g->failed_status, "%s on rank %d: rank %d failed: %s", what, c->rank,
                   g->failed_rank, g->failed_why);
}

int glm_comm_check(glm_comm *c, const char *what) {
    glm_comm_group *g = c->g;
    pthread_mutex_lock(&g->mu);
    int rc = g->failed_rank >= 0 ? report_locked(c, what) : 0;
    pthread_mutex_unlock(&g->mu);
    return rc;
}

int glm_comm_set_failed(glm_comm *c, int rank, int status, const char *why, const char *what) {
    glm_comm_group *g = c->g;
    pthread_mutex_lock(&g->mu);
    if (g->failed_rank < 0) {
        g->failed_rank = rank;
        g->failed_status = status < 0 ? status : GLM_ERR_IO;
        snprintf(g->failed_why, sizeof g->failed_why, "%s", why);
        pthread_cond_broadcast(&g->cv);
    }
    int rc = report_locked(c, what);
    pthread_mutex_unlock(&g->mu);
    return rc;
}

int glm_comm_fail(glm_comm *c, int status, const char *why) {
    if (!c) return glm_err(GLM_ERR_ARG, "glm_comm_fail: no communicator");
    return glm_comm_set_failed(c, c->rank, status, why ? why : "failed", "fail");
}

int glm_comm_enter(glm_comm *c, const char *what) {
    glm_comm_group *g = c->g;
    pthread_mutex_lock(&g->mu);
    int rc = g->failed_rank >= 0 ? report_locked(c, what) : 0;
    long k = c->n_coll++;
    pthread_mutex_unlock(&g->mu);
    if (rc) return rc;
    const glm_comm_params *p = &g->p;
    if (p->fail_rank == c->rank && k == p->fail_after) {
        char why[128];
        snprintf(why, sizeof why, "injected failure at its collective %ld (%s)", k, what);
        return glm_comm_set_failed(c, c->rank, GLM_ERR_IO, why, what);
    }
    return 0;
}

int glm_comm_late_ranks(glm_comm *c, char *buf, size_t cap) {
    glm_comm_group *g = c->g;
    int first = -1;
    size_t len = 0;
    if (cap) buf[0] = 0;
    pthread_mutex_lock(&g->mu);
    for (int i = 0; i < g->n; i++)
        if (g->ranks[i].n_coll < c->n_coll) {
            if (first < 0) first = g->ranks[i].rank;
            if (len < cap) len += snprintf(buf + len, cap - len, "%s%d", len ? " " : "", g->ranks[i].rank);
        }
    pthread_mutex_unlock(&g->mu);
    return first;
}

/* Returns now + s on CLOCK_MONOTONIC. */
static struct timespec deadline_after(double s) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    double whole = floor(s);
    t.tv_sec += (time_t)whole;
    t.tv_nsec += (long)((s - whole) * 1e9);
    if (t.tv_nsec >= 1000000000L) { t.tv_sec++; t.tv_nsec -= 1000000000L; }
    return t;
}

int glm_comm_host_barrier(glm_comm *c, const char *what) {
    glm_comm_group *g = c->g;
    pthread_mutex_lock(&g->mu);
    if (g->failed_rank >= 0) {
        int rc = report_locked(c, what);
        pthread_mutex_unlock(&g->mu);
        return rc;
    }
    uint64_t mine = g->gen;
    c->gen = mine + 1;
    if (++g->arrived == g->n) {
        g->arrived = 0;
        g->gen++;
        pthread_cond_broadcast(&g->cv);
        pthread_mutex_unlock(&g->mu);
        return 0;
    }
    struct timespec until = deadline_after(g->p.timeout_s);
    while (g->gen == mine && g->failed_rank < 0) {
        if (pthread_cond_timedwait(&g->cv, &g->mu, &until) != ETIMEDOUT) continue;
        if (g->gen != mine || g->failed_rank >= 0) break;
        /* the late ranks: those that have not arrived at this barrier */
        char late[256] = "";
        int first = -1;
        size_t len = 0;
        for (int i = 0; i < g->n; i++)
            if (g->ranks[i].gen <= mine) {
                if (first < 0) first = g->ranks[i].rank;
                if (len < sizeof late)
                    len += snprintf(late + len, sizeof late - len, "%s%d", len ? " " : "", g->ranks[i].rank);
            }
        g->failed_rank = first;
        g->failed_status = GLM_ERR_IO;
        snprintf(g->failed_why, sizeof g->failed_why,
                 "did not reach the %s within %g s (late ranks: %s)", what, g->p.timeout_s, late);
        pthread_cond_broadcast(&g->cv);
    }
    int rc = g->gen != mine ? 0 : report_locked(c, what);
    if (rc) g->arrived--;     /* leaves the barrier it will never pass */
    pthread_mutex_unlock(&g->mu);
    return rc;
}

/* Returns the name of a posted dtype (-1: the int32 ids of a broadcast). */
static const char *post_dtype_name(int dt) {
    return dt == GLM_COMM_F32 ? "f32" : dt == GLM_COMM_BF16 ? "bf16" : "i32";
}

/* Checks that every rank posted what rank 0 posted (count and dtype); on a mismatch
 * marks the group failed naming the first odd rank and returns the error. */
static int check_posts(glm_comm *c, const char *what) {
    glm_comm_group *g = c->g;
    const glm_comm *r0 = &g->ranks[0];
    for (int i = 1; i < g->n; i++) {
        const glm_comm *r = &g->ranks[i];
        if (r->n != r0->n || r->dtype != r0->dtype) {
            char why[200];
            snprintf(why, sizeof why, "passed %zu %s values to the %s, rank %d passed %zu %s", r->n,
                     post_dtype_name(r->dtype), what, r0->rank, r0->n, post_dtype_name(r0->dtype));
            return glm_comm_set_failed(c, r->rank, GLM_ERR_ARG, why, what);
        }
    }
    return 0;
}

int glm_comm_host_all_reduce(glm_comm *c, void *buf, size_t n, glm_comm_dtype dt, const char *what) {
    glm_comm_group *g = c->g;
    c->buf = buf; c->n = n; c->dtype = (int)dt;
    int rc = glm_comm_host_barrier(c, what);
    if (!rc) rc = check_posts(c, what);
    if (rc) return rc;
    /* this rank's slice [lo, hi) of every buffer: sum in rank order, write to all */
    size_t lo = n * (size_t)c->local / (size_t)g->n, hi = n * (size_t)(c->local + 1) / (size_t)g->n;
    if (dt == GLM_COMM_F32) {
        for (size_t i = lo; i < hi; i++) {
            float s = ((const float *)g->ranks[0].buf)[i];
            for (int r = 1; r < g->n; r++) s += ((const float *)g->ranks[r].buf)[i];
            for (int r = 0; r < g->n; r++) ((float *)g->ranks[r].buf)[i] = s;
        }
    } else {
        for (size_t i = lo; i < hi; i++) {
            float s = glm_bf16_to_f32(((const uint16_t *)g->ranks[0].buf)[i]);
            for (int r = 1; r < g->n; r++) s += glm_bf16_to_f32(((const uint16_t *)g->ranks[r].buf)[i]);
            uint16_t h = glm_f32_to_bf16(s);
            for (int r = 0; r < g->n; r++) ((uint16_t *)g->ranks[r].buf)[i] = h;
        }
    }
    return glm_comm_host_barrier(c, what);   /* no rank returns before every slice is written */
}

/* Bytes of one element of dt. */
static size_t dtype_size(glm_comm_dtype dt) { return dt == GLM_COMM_F32 ? 4 : 2; }

int glm_comm_host_all_gather(glm_comm *c, const void *send, void *recv, size_t n, glm_comm_dtype dt, const char *what) {
    glm_comm_group *g = c->g;
    c->src = send; c->n = n; c->dtype = (int)dt;
    int rc = glm_comm_host_barrier(c, what);
    if (!rc) rc = check_posts(c, what);
    if (rc) return rc;
    size_t bytes = n * dtype_size(dt);
    for (int r = 0; r < g->n && bytes; r++) memcpy((char *)recv + (size_t)r * bytes, g->ranks[r].src, bytes);
    return glm_comm_host_barrier(c, what);   /* no rank reuses its send buffer before all have read it */
}

int glm_comm_host_broadcast_i32(glm_comm *c, int32_t *ids, size_t n, const char *what) {
    glm_comm_group *g = c->g;
    c->buf = ids; c->n = n; c->dtype = -1;
    int rc = glm_comm_host_barrier(c, what);
    if (!rc) rc = check_posts(c, what);
    if (rc) return rc;
    if (c->local != 0 && n) memcpy(ids, g->ranks[0].buf, n * sizeof *ids);
    return glm_comm_host_barrier(c, what);
}

/* ---- the local kind ---- */

static int local_init(glm_comm_group *g, const glm_comm_params *p) { (void)g; (void)p; return 0; }
static void local_free(glm_comm_group *g) { (void)g; }

static int local_all_reduce(glm_comm *c, void *buf, size_t n, glm_comm_dtype dt, void *stream) {
    (void)stream;
    int rc = glm_comm_enter(c, "all-reduce");
    return rc ? rc : glm_comm_host_all_reduce(c, buf, n, dt, "all-reduce");
}

static int local_all_gather(glm_comm *c, const void *send, void *recv, size_t n, glm_comm_dtype dt, void *stream) {
    (void)stream;
    int rc = glm_comm_enter(c, "all-gather");
    return rc ? rc : glm_comm_host_all_gather(c, send, recv, n, dt, "all-gather");
}

static int local_broadcast_i32(glm_comm *c, int32_t *ids, size_t n, void *stream) {
    (void)stream;
    int rc = glm_comm_enter(c, "broadcast");
    return rc ? rc : glm_comm_host_broadcast_i32(c, ids, n, "broadcast");
}

static int local_barrier(glm_comm *c, void *stream) {
    (void)stream;
    int rc = glm_comm_enter(c, "barrier");
    return rc ? rc : glm_comm_host_barrier(c, "barrier");
}

static int local_wait(glm_comm *c, void *stream) {
    (void)stream;
    return glm_comm_check(c, "wait");
}

static const glm_comm_ops local_ops = {
    "local", local_init, local_free, local_all_reduce, local_all_gather, local_broadcast_i32, local_barrier,
    local_wait,
};

/* ---- the group ---- */

/* Returns 0 when p describes a group this build can make, else the error. */
static int check_params(const glm_comm_params *p) {
    if (p->kind != GLM_COMM_LOCAL && p->kind != GLM_COMM_NCCL)
        return glm_err(GLM_ERR_ARG, "communicator: unknown kind %d", (int)p->kind);
    if (p->n_ranks < 1 || p->n_ranks > GLM_COMM_MAX_RANKS)
        return glm_err(GLM_ERR_ARG, "communicator: %d ranks (1..%d in one process)", p->n_ranks,
                       GLM_COMM_MAX_RANKS);
    int world = p->world_size ? p->world_size : p->n_ranks;
    if (world < p->n_ranks || p->first_rank < 0 || p->first_rank > world - p->n_ranks)
        return glm_err(GLM_ERR_ARG, "communicator: ranks %d..%d of this process do not fit a world of %d",
                       p->first_rank, p->first_rank + p->n_ranks - 1, world);
    if (p->kind == GLM_COMM_LOCAL && world != p->n_ranks)
        return glm_err(GLM_ERR_ARG, "communicator: the local kind has no ranks in other processes "
                       "(world %d, %d here)", world, p->n_ranks);
    if (!(p->timeout_s > 0) || isinf(p->timeout_s))
        return glm_err(GLM_ERR_ARG, "communicator: timeout must be a positive number of seconds "
                       "(GLM_COMM_TIMEOUT_S='%s')", getenv("GLM_COMM_TIMEOUT_S") ? getenv("GLM_COMM_TIMEOUT_S") : "");
    if (p->fail_rank < -1 || p->fail_rank >= world)
        return glm_err(GLM_ERR_ARG, "communicator: fail_rank must be -1 or a rank 0..%d (GLM_COMM_FAIL_RANK='%s')",
                       world - 1, getenv("GLM_COMM_FAIL_RANK") ? getenv("GLM_COMM_FAIL_RANK") : "");
    if (p->fail_after < 0)
        return glm_err(GLM_ERR_ARG, "communicator: fail_after must be >= 0 (GLM_COMM_FAIL_AFTER='%s')",
                       getenv("GLM_COMM_FAIL_AFTER") ? getenv("GLM_COMM_FAIL_AFTER") : "");
    return 0;
}

int glm_comm_group_new(const glm_comm_params *p, glm_comm_group **out) {
    if (!p || !out) return glm_err(GLM_ERR_ARG, "glm_comm_group_new: NULL argument");
    *out = NULL;
    int rc = check_params(p);
    if (rc) return rc;
    glm_comm_group *g = calloc(1, sizeof *g);
    if (!g) return glm_err(GLM_ERR_OOM, "communicator: out of memory");
    g->p = *p;
    g->p.devices = NULL;        /* borrowed only by init */
    g->p.unique_id = NULL;
    g->n = p->n_ranks;
    g->world = p->world_size ? p->world_size : p->n_ranks;
    g->failed_rank = -1;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&g->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&g->mu, NULL);
    for (int i = 0; i < g->n; i++) {
        g->ranks[i].g = g;
        g->ranks[i].local = i;
        g->ranks[i].rank = p->first_rank + i;
    }
    g->ops = p->kind == GLM_COMM_LOCAL ? &local_ops : &glm_comm_nccl_ops;
    g->kind_name = g->ops->name;
    rc = g->ops->init(g, p);
    if (rc) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", glm_last_error());
        glm_comm_group_free(g);
        return glm_err(rc, "%s", msg);
    }
    *out = g;
    return 0;
}

void glm_comm_group_free(glm_comm_group *g) {
    if (!g) return;
    g->ops->free(g);
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

glm_comm *glm_comm_get(glm_comm_group *g, int i) {
    return g && i >= 0 && i < g->n ? &g->ranks[i] : NULL;
}

int glm_comm_rank(const glm_comm *c) { return c->rank; }
int glm_comm_size(const glm_comm *c) { return c->g->world; }

const char *glm_comm_kind_name(const glm_comm *c) {
    return c->g->kind_name;
}

/* ---- the calls: argument checks, then the kind ---- */


/* Counts a collective's host time (started at t0) into c's totals; returns rc. */
static int timed(glm_comm *c, double t0, int rc) {
    c->busy_s += glm_now_s() - t0;
    c->n_timed++;
    return rc;
}

double glm_comm_seconds(const glm_comm *c, long *n) {
    if (n) *n = c ? c->n_timed : 0;
    return c ? c->busy_s : 0.0;
}

int glm_comm_all_reduce(glm_comm *c, void *buf, size_t n, glm_comm_dtype dtype, void *stream) {
    if (!c || (!buf && n)) return glm_err(GLM_ERR_ARG, "all-reduce: NULL communicator or buffer");
    if (dtype != GLM_COMM_F32 && dtype != GLM_COMM_BF16)
        return glm_err(GLM_ERR_ARG, "all-reduce on rank %d: unknown dtype %d", c->rank, (int)dtype);
    const double t0 = glm_now_s();
    return timed(c, t0, c->g->ops->all_reduce(c, buf, n, dtype, stream));
}

int glm_comm_all_gather(glm_comm *c, const void *send, void *recv, size_t n, glm_comm_dtype dtype, void *stream) {
    if (!c || ((!send || !recv) && n)) return glm_err(GLM_ERR_ARG, "all-gather: NULL communicator or buffer");
    if (dtype != GLM_COMM_F32 && dtype != GLM_COMM_BF16)
        return glm_err(GLM_ERR_ARG, "all-gather on rank %d: unknown dtype %d", c->rank, (int)dtype);
    size_t bytes = n * dtype_size(dtype);
    const char *s = send, *r = recv;
    if (n && s < r + (size_t)c->g->world * bytes && r < s + bytes)
        return glm_err(GLM_ERR_ARG, "all-gather on rank %d: send and recv overlap", c->rank);
    const double t0 = glm_now_s();
    return timed(c, t0, c->g->ops->all_gather(c, send, recv, n, dtype, stream));
}

int glm_comm_broadcast_i32(glm_comm *c, int32_t *ids, size_t n, void *stream) {
    if (!c || (!ids && n)) return glm_err(GLM_ERR_ARG, "broadcast: NULL communicator or buffer");
    return c->g->ops->broadcast_i32(c, ids, n, stream);
}

int glm_comm_barrier(glm_comm *c, void *stream) {
    if (!c) return glm_err(GLM_ERR_ARG, "barrier: NULL communicator");
    return c->g->ops->barrier(c, stream);
}

int glm_comm_wait(glm_comm *c, void *stream) {
    if (!c) return glm_err(GLM_ERR_ARG, "wait: NULL communicator");
    return c->g->ops->wait(c, stream);
}
