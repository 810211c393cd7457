/* comm-cuda.c - the NCCL kind of the communicator: buffers in device memory, one
 * communicator a rank.
 *
 * One GPU a rank: NCCL collectives on the caller's stream (capturable in a CUDA graph).
 * The communicators are non-blocking (ncclConfig_t.blocking = 0), so no NCCL call can
 * hold a thread: a call that answers ncclInProgress is polled with
 * ncclCommGetAsyncError until it settles, the group fails or the timeout passes, and
 * glm_comm_wait polls the stream the same way; a failure aborts the rank's
 * communicator (ncclCommAbort), which ends its pending kernels, and marks the group
 * failed so the other ranks abort theirs at their next call or poll.
 *
 * Ranks sharing a GPU ("shared-gpu"): NCCL 2.28 refuses two ranks of one communicator
 * on one device ("Duplicate GPU detected"), so when the device list repeats a GPU each
 * rank copies its buffer to page-locked host memory, the local kind sums the copies in
 * rank order, and each rank copies the sum back: correct and deterministic, not
 * capturable, and slow (a test and projection mode; docs/PARALLEL.md). This mode needs
 * only the CUDA runtime; NCCL proper is compiled when GLM_NCCL is defined (-lnccl). */
#include "comm.h"
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if !defined(GLM_CUDA)

/* Returns the error of a build without CUDA. */
static int none_init(glm_comm_group *g, const glm_comm_params *p) {
    (void)g;
    (void)p;
    return glm_err(GLM_ERR_NOT_IMPLEMENTED, "NCCL communicator: not implemented in a build without CUDA");
}
static void none_free(glm_comm_group *g) { (void)g; }

const glm_comm_ops glm_comm_nccl_ops = { "nccl", none_init, none_free, NULL, NULL, NULL, NULL, NULL };

#else

#include <cuda_runtime_api.h>
#ifdef GLM_NCCL
#include <nccl.h>
#endif

typedef struct {
    int device;
#ifdef GLM_NCCL
    ncclComm_t comm;           /* NULL in the shared-gpu mode */
#endif
    int aborted;
    void *host;                /* shared-gpu: page-locked staging copy */
    size_t host_cap;
    void *host_out;            /* shared-gpu: page-locked all-gather result */
    size_t host_out_cap;
    int32_t *scratch;          /* device word for the barrier across processes */
} cu_rank;

typedef struct {
    int shared;                /* ranks share GPUs: staged host sum */
    cu_rank r[GLM_COMM_MAX_RANKS];
} cu_group;

static cu_rank *rank_of(glm_comm *c) { return &((cu_group *)c->g->impl)->r[c->local]; }


/* Sleeps a little: nothing for the first millisecond of a wait, 50 us after. */
static void nap(double waited_s) {
    if (waited_s < 1e-3) return;
    struct timespec t = { 0, 50000 };
    nanosleep(&t, NULL);
}

/* Aborts the rank's NCCL communicator once (ends its pending kernels). */
static void abort_rank(cu_rank *cr) {
#ifdef GLM_NCCL
    if (cr->comm && !cr->aborted) ncclCommAbort(cr->comm);
#endif
    cr->aborted = 1;
}

/* Marks the group failed by c's rank with why, aborts its communicator; returns the error. */
static int fail_rank(glm_comm *c, const char *why, const char *what) {
    int rc = glm_comm_set_failed(c, c->rank, GLM_ERR_CUDA, why, what);
    abort_rank(rank_of(c));
    return rc;
}

/* Returns 0, or marks the group failed by c's rank after the CUDA call failed. */
static int cuda_check(glm_comm *c, cudaError_t e, const char *call, const char *what) {
    if (e == cudaSuccess) return 0;
    char why[400];
    snprintf(why, sizeof why, "%s on device %d: %s", call, rank_of(c)->device, cudaGetErrorString(e));
    return fail_rank(c, why, what);
}
#define CU_CHECK(c, call, what) do { int rc_ = cuda_check((c), (call), #call, (what)); if (rc_) return rc_; } while (0)

/* Waits until stream has finished its work, the group fails, NCCL reports an error or
 * the timeout passes; returns 0 or the error (aborting the rank's communicator). */
static int wait_stream(glm_comm *c, cudaStream_t st, const char *what) {
    cu_rank *cr = rank_of(c);
    double t0 = glm_now_s(), timeout = c->g->p.timeout_s;
    for (;;) {
        int rc = glm_comm_check(c, what);
        if (rc) {
            abort_rank(cr);
            return rc;
        }
        cudaError_t e = cudaStreamQuery(st);
        if (e == cudaSuccess) return 0;
        if (e != cudaErrorNotReady) return cuda_check(c, e, "cudaStreamQuery", what);
#ifdef GLM_NCCL
        if (cr->comm) {
            ncclResult_t a = ncclSuccess, q = ncclCommGetAsyncError(cr->comm, &a);
            if (q == ncclSuccess && a != ncclSuccess && a != ncclInProgress) q = a;
            if (q != ncclSuccess) {
                char why[400];
                snprintf(why, sizeof why, "NCCL error while waiting for its stream: %s (%s)",
                         ncclGetErrorString(q), ncclGetLastError(cr->comm));
                return fail_rank(c, why, what);
            }
        }
#endif
        double waited = glm_now_s() - t0;
        if (waited > timeout) {
            char why[400], late[256];
            int first = glm_comm_late_ranks(c, late, sizeof late);
            if (first < 0) {
                snprintf(why, sizeof why, "its stream did not finish within %g s", timeout);
                return fail_rank(c, why, what);
            }
            snprintf(why, sizeof why, "did not reach collective %ld within %g s (late ranks: %s)", c->n_coll - 1,
                     timeout, late);
            int rc = glm_comm_set_failed(c, first, GLM_ERR_IO, why, what);
            abort_rank(cr);
            return rc;
        }
        nap(waited);
    }
}

#ifdef GLM_NCCL
/* Waits for a non-blocking NCCL call's result r to settle; returns 0 or the error
 * naming the call (aborting the rank's communicator). */
static int nccl_done(glm_comm *c, ncclResult_t r, const char *call, const char *what) {
    cu_rank *cr = rank_of(c);
    double t0 = glm_now_s();
    while (r == ncclInProgress) {
        int rc = glm_comm_check(c, what);
        if (rc) {
            abort_rank(cr);
            return rc;
        }
        double waited = glm_now_s() - t0;
        if (waited > c->g->p.timeout_s) break;
        nap(waited);
        ncclResult_t a = ncclInProgress, q = ncclCommGetAsyncError(cr->comm, &a);
        r = q != ncclSuccess ? q : a;
    }
    if (r == ncclSuccess) return 0;
    char why[400];
    if (r == ncclInProgress)
        snprintf(why, sizeof why, "%s did not complete within %g s", call, c->g->p.timeout_s);
    else
        snprintf(why, sizeof why, "%s: %s (%s)", call, ncclGetErrorString(r), ncclGetLastError(cr->comm));
    return fail_rank(c, why, what);
}
#define NCCL_CHECK(c, call, what) do { int rc_ = nccl_done((c), (call), #call, (what)); if (rc_) return rc_; } while (0)

/* Creates every local communicator in one NCCL group; returns a status. */
static int nccl_init_all(glm_comm_group *g, const glm_comm_params *p, cu_group *cg) {
    setenv("NCCL_NVLS_ENABLE", "0", 0);   /* NVLink multicast off unless the user set it */
    ncclUniqueId id;
    ncclResult_t r;
    if (g->world > g->n) {
        if (!p->unique_id)
            return glm_err(GLM_ERR_ARG, "NCCL communicator: a world of %d ranks across processes needs the "
                           "unique id of global rank 0 (glm_comm_unique_id)", g->world);
        memcpy(&id, p->unique_id, sizeof id);
    } else if ((r = ncclGetUniqueId(&id)) != ncclSuccess) {
        return glm_err(GLM_ERR_CUDA, "NCCL communicator: ncclGetUniqueId: %s (%s)", ncclGetErrorString(r),
                       ncclGetLastError(NULL));
    }
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    char err[512] = "";
    if ((r = ncclGroupStart()) != ncclSuccess)
        return glm_err(GLM_ERR_CUDA, "NCCL communicator: ncclGroupStart: %s", ncclGetErrorString(r));
    for (int i = 0; i < g->n && !*err; i++) {
        cudaError_t e = cudaSetDevice(cg->r[i].device);
        if (e != cudaSuccess) {
            snprintf(err, sizeof err, "rank %d: cudaSetDevice(%d): %s", g->ranks[i].rank, cg->r[i].device,
                     cudaGetErrorString(e));
            break;
        }
        r = ncclCommInitRankConfig(&cg->r[i].comm, g->world, id, g->ranks[i].rank, &cfg);
        if (r != ncclSuccess && r != ncclInProgress)
            snprintf(err, sizeof err, "rank %d: ncclCommInitRankConfig: %s (%s)", g->ranks[i].rank,
                     ncclGetErrorString(r), ncclGetLastError(cg->r[i].comm));
    }
    r = ncclGroupEnd();
    if (!*err && r != ncclSuccess && r != ncclInProgress)
        snprintf(err, sizeof err, "ncclGroupEnd: %s (%s)", ncclGetErrorString(r), ncclGetLastError(NULL));
    /* every rank's init settles, fails or times out */
    double t0 = glm_now_s();
    for (int i = 0; i < g->n && !*err; i++) {
        ncclResult_t a = ncclInProgress;
        while (a == ncclInProgress) {
            if (!cg->r[i].comm) { snprintf(err, sizeof err, "rank %d: no communicator", g->ranks[i].rank); break; }
            ncclResult_t q = ncclCommGetAsyncError(cg->r[i].comm, &a);
            if (q != ncclSuccess) a = q;
            if (a != ncclSuccess && a != ncclInProgress)
                snprintf(err, sizeof err, "rank %d: ncclCommInitRankConfig: %s (%s)", g->ranks[i].rank,
                         ncclGetErrorString(a), ncclGetLastError(cg->r[i].comm));
            else if (a == ncclInProgress && glm_now_s() - t0 > g->p.timeout_s)
                snprintf(err, sizeof err, "rank %d: ncclCommInitRankConfig did not complete within %g s "
                         "(are all %d ranks started?)", g->ranks[i].rank, g->p.timeout_s, g->world);
            else { nap(glm_now_s() - t0); continue; }
            break;
        }
    }
    for (int i = 0; i < g->n && !*err && g->world > g->n; i++) {
        cudaError_t e = cudaSetDevice(cg->r[i].device);
        if (e == cudaSuccess) e = cudaMalloc((void **)&cg->r[i].scratch, sizeof(int32_t));
        if (e != cudaSuccess)
            snprintf(err, sizeof err, "rank %d: cudaMalloc of the barrier word: %s", g->ranks[i].rank,
                     cudaGetErrorString(e));
    }
    if (*err) {
        g->failed_rank = g->ranks[0].rank;      /* free() aborts the communicators */
        return glm_err(GLM_ERR_CUDA, "NCCL communicator: %s", err);
    }
    return 0;
}
#endif

/* Creates the group state: checks the devices, picks NCCL or the shared-gpu mode. */
static int cu_init(glm_comm_group *g, const glm_comm_params *p) {
    cu_group *cg = calloc(1, sizeof *cg);
    if (!cg) return glm_err(GLM_ERR_OOM, "NCCL communicator: out of memory");
    g->impl = cg;
    int nd = 0;
    cudaError_t e = cudaGetDeviceCount(&nd);
    if (e != cudaSuccess) return glm_err(GLM_ERR_CUDA, "NCCL communicator: no CUDA device: %s", cudaGetErrorString(e));
    for (int i = 0; i < g->n; i++) {
        int d = p->devices ? p->devices[i] : i;
        if (d < 0 || d >= nd)
            return glm_err(GLM_ERR_ARG, "NCCL communicator: rank %d: CUDA device %d does not exist (%d visible)",
                           g->ranks[i].rank, d, nd);
        cg->r[i].device = d;
        for (int j = 0; j < i; j++) cg->shared |= cg->r[j].device == d;
    }
    for (int i = 0; i < g->n; i++) g->ranks[i].impl = &cg->r[i];
    if (cg->shared) {
        if (g->world > g->n)
            return glm_err(GLM_ERR_UNSUPPORTED, "NCCL communicator: ranks sharing a GPU work only in one process "
                           "(world %d, %d ranks here)", g->world, g->n);
        g->kind_name = "shared-gpu";
        return 0;
    }
#ifdef GLM_NCCL
    return nccl_init_all(g, p, cg);
#else
    return glm_err(GLM_ERR_NOT_IMPLEMENTED, "NCCL communicator: not implemented in this build (compiled without "
                   "GLM_NCCL; one GPU a rank needs NCCL, ranks sharing a GPU do not)");
#endif
}

/* Frees the group state: finalises healthy communicators (every one started before any
 * is waited for: a finalize may wait for the peers' finalize), aborts failed ones. */
static void cu_free(glm_comm_group *g) {
    cu_group *cg = g->impl;
    if (!cg) return;
#ifdef GLM_NCCL
    int healthy = g->failed_rank < 0;
    ncclResult_t state[GLM_COMM_MAX_RANKS];
    for (int i = 0; i < g->n; i++) {
        cu_rank *cr = &cg->r[i];
        state[i] = ncclInternalError;
        if (!cr->comm || cr->aborted || !healthy) continue;
        cudaSetDevice(cr->device);
        state[i] = ncclCommFinalize(cr->comm);
    }
    double t0 = glm_now_s();
    for (int i = 0; i < g->n; i++) {
        cu_rank *cr = &cg->r[i];
        while (state[i] == ncclInProgress && glm_now_s() - t0 < g->p.timeout_s) {
            nap(glm_now_s() - t0);
            if (ncclCommGetAsyncError(cr->comm, &state[i]) != ncclSuccess) state[i] = ncclInternalError;
        }
    }
    for (int i = 0; i < g->n; i++) {
        cu_rank *cr = &cg->r[i];
        if (!cr->comm) continue;
        cudaSetDevice(cr->device);
        if (state[i] == ncclSuccess) ncclCommDestroy(cr->comm);
        else if (!cr->aborted) ncclCommAbort(cr->comm);
    }
#endif
    for (int i = 0; i < g->n; i++) {
        cu_rank *cr = &cg->r[i];
        cudaSetDevice(cr->device);
        if (cr->host) cudaFreeHost(cr->host);
        if (cr->host_out) cudaFreeHost(cr->host_out);
        if (cr->scratch) cudaFree(cr->scratch);
    }
    free(cg);
    g->impl = NULL;
}

/* Grows the page-locked buffer *p of capacity *cap to bytes; returns a status. */
static int grow_host(glm_comm *c, void **p, size_t *cap, size_t bytes, const char *what) {
    if (bytes <= *cap) return 0;
    if (*p) CU_CHECK(c, cudaFreeHost(*p), what);
    *p = NULL;
    *cap = 0;
    CU_CHECK(c, cudaMallocHost(p, bytes), what);
    *cap = bytes;
    return 0;
}

/* Shared-gpu: copies buf[bytes] from the device to the rank's page-locked copy and
 * waits for it; returns a status. */
static int stage_down(glm_comm *c, const void *buf, size_t bytes, cudaStream_t st, const char *what) {
    cu_rank *cr = rank_of(c);
    CU_CHECK(c, cudaSetDevice(cr->device), what);
    enum cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    CU_CHECK(c, cudaStreamIsCapturing(st, &cap), what);
    if (cap != cudaStreamCaptureStatusNone)
        return fail_rank(c, "ranks sharing a GPU cannot capture a collective in a CUDA graph", what);
    int rc = grow_host(c, &cr->host, &cr->host_cap, bytes, what);
    if (rc) return rc;
    if (bytes) CU_CHECK(c, cudaMemcpyAsync(cr->host, buf, bytes, cudaMemcpyDeviceToHost, st), what);
    return wait_stream(c, st, what);
}

static int cu_all_reduce(glm_comm *c, void *buf, size_t n, glm_comm_dtype dt, void *stream) {
    cudaStream_t st = (cudaStream_t)stream;
    int rc = glm_comm_enter(c, "all-reduce");
    if (rc) return rc;
    cu_rank *cr = rank_of(c);
    if (((cu_group *)c->g->impl)->shared) {
        size_t bytes = n * (dt == GLM_COMM_F32 ? 4 : 2);
        if ((rc = stage_down(c, buf, bytes, st, "all-reduce"))) return rc;
        if ((rc = glm_comm_host_all_reduce(c, cr->host, n, dt, "all-reduce"))) return rc;
        if (bytes) CU_CHECK(c, cudaMemcpyAsync(buf, cr->host, bytes, cudaMemcpyHostToDevice, st), "all-reduce");
        return 0;
    }
#ifdef GLM_NCCL
    CU_CHECK(c, cudaSetDevice(cr->device), "all-reduce");
    NCCL_CHECK(c, ncclAllReduce(buf, buf, n, dt == GLM_COMM_F32 ? ncclFloat32 : ncclBfloat16, ncclSum, cr->comm, st),
               "all-reduce");
    return 0;
#else
    return glm_err(GLM_ERR_NOT_IMPLEMENTED, "all-reduce: NCCL not built");
#endif
}

static int cu_all_gather(glm_comm *c, const void *send, void *recv, size_t n, glm_comm_dtype dt, void *stream) {
    cudaStream_t st = (cudaStream_t)stream;
    int rc = glm_comm_enter(c, "all-gather");
    if (rc) return rc;
    cu_rank *cr = rank_of(c);
    if (((cu_group *)c->g->impl)->shared) {
        size_t bytes = n * (dt == GLM_COMM_F32 ? 4 : 2), all = bytes * (size_t)c->g->n;
        if ((rc = stage_down(c, send, bytes, st, "all-gather"))) return rc;
        if ((rc = grow_host(c, &cr->host_out, &cr->host_out_cap, all, "all-gather"))) return rc;
        if ((rc = glm_comm_host_all_gather(c, cr->host, cr->host_out, n, dt, "all-gather"))) return rc;
        if (all) CU_CHECK(c, cudaMemcpyAsync(recv, cr->host_out, all, cudaMemcpyHostToDevice, st), "all-gather");
        return 0;
    }
#ifdef GLM_NCCL
    CU_CHECK(c, cudaSetDevice(cr->device), "all-gather");
    NCCL_CHECK(c, ncclAllGather(send, recv, n, dt == GLM_COMM_F32 ? ncclFloat32 : ncclBfloat16, cr->comm, st),
               "all-gather");
    return 0;
#else
    return glm_err(GLM_ERR_NOT_IMPLEMENTED, "all-gather: NCCL not built");
#endif
}

static int cu_broadcast_i32(glm_comm *c, int32_t *ids, size_t n, void *stream) {
    cudaStream_t st = (cudaStream_t)stream;
    int rc = glm_comm_enter(c, "broadcast");
    if (rc) return rc;
    cu_rank *cr = rank_of(c);
    if (((cu_group *)c->g->impl)->shared) {
        size_t bytes = n * sizeof(int32_t);
        if ((rc = stage_down(c, ids, bytes, st, "broadcast"))) return rc;
        if ((rc = glm_comm_host_broadcast_i32(c, cr->host, n, "broadcast"))) return rc;
        if (bytes) CU_CHECK(c, cudaMemcpyAsync(ids, cr->host, bytes, cudaMemcpyHostToDevice, st), "broadcast");
        return 0;
    }
#ifdef GLM_NCCL
    CU_CHECK(c, cudaSetDevice(cr->device), "broadcast");
    NCCL_CHECK(c, ncclBroadcast(ids, ids, n, ncclInt32, 0, cr->comm, st), "broadcast");
    return 0;
#else
    return glm_err(GLM_ERR_NOT_IMPLEMENTED, "broadcast: NCCL not built");
#endif
}

static int cu_barrier(glm_comm *c, void *stream) {
    cudaStream_t st = (cudaStream_t)stream;
    int rc = glm_comm_enter(c, "barrier");
    if (rc) return rc;
    cu_rank *cr = rank_of(c);
    CU_CHECK(c, cudaSetDevice(cr->device), "barrier");
    if ((rc = wait_stream(c, st, "barrier")) || (rc = glm_comm_host_barrier(c, "barrier"))) return rc;
#ifdef GLM_NCCL
    if (cr->scratch) {      /* ranks in other processes: a one-word all-reduce */
        NCCL_CHECK(c, ncclAllReduce(cr->scratch, cr->scratch, 1, ncclInt32, ncclSum, cr->comm, st), "barrier");
        return wait_stream(c, st, "barrier");
    }
#endif
    return 0;
}

static int cu_wait(glm_comm *c, void *stream) {
    CU_CHECK(c, cudaSetDevice(rank_of(c)->device), "wait");
    return wait_stream(c, (cudaStream_t)stream, "wait");
}

const glm_comm_ops glm_comm_nccl_ops = {
    "nccl", cu_init, cu_free, cu_all_reduce, cu_all_gather, cu_broadcast_i32, cu_barrier, cu_wait,
};

#endif

int glm_comm_unique_id(uint8_t out[GLM_COMM_ID_BYTES]) {
    if (!out) return glm_err(GLM_ERR_ARG, "glm_comm_unique_id: NULL argument");
#if defined(GLM_CUDA) && defined(GLM_NCCL)
    _Static_assert(sizeof(ncclUniqueId) == GLM_COMM_ID_BYTES, "ncclUniqueId size");
    ncclUniqueId id;
    ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess) return glm_err(GLM_ERR_CUDA, "ncclGetUniqueId: %s", ncclGetErrorString(r));
    memcpy(out, &id, sizeof id);
    return 0;
#else
    return glm_err(GLM_ERR_NOT_IMPLEMENTED, "glm_comm_unique_id: not implemented in a build without NCCL");
#endif
}
