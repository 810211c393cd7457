/* comm.h - the communicator of a tensor-parallel model: N ranks that sum their partial
 * activations in place (all-reduce), gather the logits slices (all-gather), share the
 * sampled ids (broadcast from rank 0) and meet at barriers. Internal to libglm; docs/PARALLEL.md says where each call sits.
 *
 * A group holds the ranks of this process; each rank is driven by its own thread
 * through its glm_comm handle (one thread a rank: the collectives of one rank are never
 * called from two threads at once). Two kinds share the interface:
 *   GLM_COMM_LOCAL   ranks are threads, buffers in host memory, the sum in host memory
 *                    in rank order (((r0 + r1) + r2) + ...), so the result is bitwise
 *                    equal to a serial sum and reproducible;
 *   GLM_COMM_NCCL    one GPU a rank, buffers in device memory, NCCL collectives enqueued
 *                    on the caller's stream (so they can be captured in a CUDA graph);
 *                    when the device list repeats a GPU (NCCL refuses two ranks of one
 *                    communicator on one device), the ranks share it and the sum goes
 *                    through page-locked host memory in rank order ("shared-gpu"): a
 *                    test and projection mode, not capturable.
 * Failure is shared: a rank that fails (glm_comm_fail, an injected failure, a timeout,
 * an NCCL error) marks the group failed, and every rank's next collective or wait
 * returns an error whose message names the failed rank, never a hang: every wait gives
 * up after the group's timeout. The status is the failing rank's own (glm_comm_fail),
 * GLM_ERR_CUDA for NCCL and CUDA errors, GLM_ERR_IO for a timeout or an injected
 * failure. */
#ifndef GLM_COMM_H
#define GLM_COMM_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { GLM_COMM_LOCAL, GLM_COMM_NCCL } glm_comm_kind;
typedef enum { GLM_COMM_F32, GLM_COMM_BF16 } glm_comm_dtype;

#define GLM_COMM_MAX_RANKS 64
#define GLM_COMM_ID_BYTES 128          /* ncclUniqueId */

typedef struct {
    glm_comm_kind kind;
    int n_ranks;                       /* ranks in this process, 1..GLM_COMM_MAX_RANKS */
    int world_size;                    /* ranks in all processes (0: n_ranks); NCCL only beyond n_ranks */
    int first_rank;                    /* global rank of this process's rank 0 */
    const int *devices;                /* NCCL: CUDA device of each local rank [n_ranks]; NULL: rank i on device i */
    const uint8_t *unique_id;          /* NCCL with world_size > n_ranks: the id from glm_comm_unique_id on global rank 0 */
    double timeout_s;                  /* every wait gives up after this (0: 60 s, or GLM_COMM_TIMEOUT_S) */
    int fail_rank;                     /* testing: this global rank fails (-1: none, or GLM_COMM_FAIL_RANK) */
    int fail_after;                    /* ... at its collective number fail_after (0: the first; or GLM_COMM_FAIL_AFTER) */
} glm_comm_params;

typedef struct glm_comm_group glm_comm_group;
typedef struct glm_comm glm_comm;

/* Default parameters: local kind, one rank, 60 s timeout, no injected failure; the
 * environment overrides timeout_s (GLM_COMM_TIMEOUT_S), fail_rank (GLM_COMM_FAIL_RANK)
 * and fail_after (GLM_COMM_FAIL_AFTER). */
glm_comm_params glm_comm_default_params(void);

/* Creates the group (for NCCL: every local communicator, initialised together, with
 * NCCL_NVLS_ENABLE=0 set unless the environment sets it); returns a status. */
int glm_comm_group_new(const glm_comm_params *p, glm_comm_group **out);
/* Frees the group (aborting NCCL communicators after a failure); NULL is a no-op. */
void glm_comm_group_free(glm_comm_group *g);
/* Returns local rank i's handle (0 <= i < n_ranks), or NULL. */
glm_comm *glm_comm_get(glm_comm_group *g, int i);

/* Returns the rank's global index; the number of ranks in all processes. */
int glm_comm_rank(const glm_comm *c);
/* Host seconds this rank has spent inside all-reduces and all-gathers (the whole sum for
 * the local and shared-gpu kinds; only the enqueue for NCCL), and their number in *n. */
double glm_comm_seconds(const glm_comm *c, long *n);
int glm_comm_size(const glm_comm *c);
/* Returns the kind name: "local", "nccl" or "shared-gpu" (NCCL kind, ranks sharing GPUs). */
const char *glm_comm_kind_name(const glm_comm *c);

/* Sums buf[n] in place across all ranks (every rank passes the same n and dtype; a
 * mismatch is an error naming both ranks). Local: host buffer, returns after the sum.
 * NCCL: device buffer, enqueued on stream (a cudaStream_t); call glm_comm_wait before
 * the host reads what depends on it. Returns a status. */
int glm_comm_all_reduce(glm_comm *c, void *buf, size_t n, glm_comm_dtype dtype, void *stream);
/* Gathers every rank's send[n] into recv[world_size * n] in rank order, on every rank
 * (the logits slices of a vocabulary-split lm_head); send and recv do not overlap. */
int glm_comm_all_gather(glm_comm *c, const void *send, void *recv, size_t n, glm_comm_dtype dtype, void *stream);
/* Copies rank 0's ids[n] into every rank's ids (host for local, device for NCCL). */
int glm_comm_broadcast_i32(glm_comm *c, int32_t *ids, size_t n, void *stream);
/* Returns when every rank has reached the barrier (NCCL: and the rank's earlier work on
 * stream has finished), or an error naming the failed or late ranks. */
int glm_comm_barrier(glm_comm *c, void *stream);
/* Waits until the work enqueued on stream (NULL for local) has finished, polling for
 * NCCL errors and group failure; on failure or timeout aborts this rank's NCCL
 * communicator and returns an error naming the rank. Local: returns the group state. */
int glm_comm_wait(glm_comm *c, void *stream);
/* Marks this rank failed with status and why (e.g. its backend's error and message):
 * every rank's next collective returns an error naming this rank. Returns status. */
int glm_comm_fail(glm_comm *c, int status, const char *why);

/* NCCL, several processes: writes a fresh id to out (global rank 0 makes it and hands
 * it to the others before glm_comm_group_new). Returns a status. */
int glm_comm_unique_id(uint8_t out[GLM_COMM_ID_BYTES]);

/* The place of this process in a world of several processes. */
typedef struct {
    int rank;                          /* RANK: global rank, 0..world_size-1 (unset: 0) */
    int world_size;                    /* WORLD_SIZE: ranks in all processes (unset: 1) */
    int local_rank;                    /* LOCAL_RANK: this process's GPU on its host (unset: 0) */
} glm_comm_dist;

/* Reads RANK, WORLD_SIZE and LOCAL_RANK into d; returns a status (GLM_ERR_ARG naming a
 * variable that is not an integer in range, or WORLD_SIZE without RANK). */
int glm_comm_dist_from_env(glm_comm_dist *d);
/* Hands global rank 0's id to every rank of a world of world_size processes through spec,
 * "file:PATH" (a shared file system) or "tcp:HOST:PORT" (rank 0 listens on PORT of HOST);
 * rank 0 passes its id in, the others receive it. Returns a status; every wait ends after
 * timeout_s with an error naming the file or address and the missing ranks. */
/* Checks a rendezvous spec ("file:PATH" with room for its answer files, or
 * "tcp:HOST:PORT", HOST possibly [v6], PORT 1..65535) without touching the file system or
 * the network; GLM_OK or GLM_ERR_ARG naming what is wrong. */
int glm_comm_spec_check(const char *spec);
int glm_comm_rendezvous(const char *spec, int rank, int world_size, double timeout_s,
                        uint8_t id[GLM_COMM_ID_BYTES]);

/* ---- shared by the implementations (comm.c, comm-cuda.c); not for callers ---- */
typedef struct glm_comm_ops glm_comm_ops;

struct glm_comm {
    glm_comm_group *g;
    int local;                         /* index in the group */
    int rank;                          /* global rank */
    long n_coll;                       /* collectives this rank has entered (under g->mu) */
    uint64_t gen;                      /* barriers this rank has passed */
    /* posted for the local all-reduce / broadcast */
    void *buf;
    const void *src;                   /* all-gather: the rank's send buffer */
    size_t n;
    int dtype;
    void *impl;                        /* the implementation's per-rank state */
    double busy_s;                     /* host seconds inside all-reduces and all-gathers */
    long n_timed;                      /* ... and how many */
};

struct glm_comm_group {
    glm_comm_params p;
    const glm_comm_ops *ops;
    const char *kind_name;             /* "local", "nccl", "shared-gpu" */
    int n;                             /* local ranks */
    int world;
    glm_comm ranks[GLM_COMM_MAX_RANKS];
    /* the host barrier and the failure state, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int arrived;
    uint64_t gen;                      /* barriers completed */
    int failed_rank;                   /* -1 while healthy */
    int failed_status;
    char failed_why[512];
    void *impl;                        /* the implementation's group state */
};

struct glm_comm_ops {
    const char *name;
    int (*init)(glm_comm_group *g, const glm_comm_params *p);   /* p->devices, p->unique_id: read here only */
    void (*free)(glm_comm_group *g);
    int (*all_reduce)(glm_comm *c, void *buf, size_t n, glm_comm_dtype dt, void *stream);
    int (*all_gather)(glm_comm *c, const void *send, void *recv, size_t n, glm_comm_dtype dt, void *stream);
    int (*broadcast_i32)(glm_comm *c, int32_t *ids, size_t n, void *stream);
    int (*barrier)(glm_comm *c, void *stream);
    int (*wait)(glm_comm *c, void *stream);
};

/* The NCCL implementation (comm-cuda.c), or one whose init says why it is not built. */
extern const glm_comm_ops glm_comm_nccl_ops;

/* The host meeting point of the local ranks: returns 0 when all have arrived, or the
 * group's failure (a rank that times out marks the late ranks failed). what names
 * the collective in the message. */
int glm_comm_host_barrier(glm_comm *c, const char *what);
/* Returns the group's failure as an error of this rank (what: the collective), or 0. */
int glm_comm_check(glm_comm *c, const char *what);
/* Marks the group failed by rank with status and why (the first failure wins); wakes
 * every waiter. Returns the status to propagate, with this thread's message set. */
int glm_comm_set_failed(glm_comm *c, int rank, int status, const char *why, const char *what);
/* Returns the first local rank that has entered fewer collectives than c (a rank c's
 * collective may be waiting for), or -1; lists all of them in buf. */
int glm_comm_late_ranks(glm_comm *c, char *buf, size_t cap);
/* Counts one collective of c; returns an error when it is the injected failure. */
int glm_comm_enter(glm_comm *c, const char *what);
/* The local all-reduce and broadcast over host buffers (the shared-GPU mode sums its
 * staged copies with these). */
int glm_comm_host_all_reduce(glm_comm *c, void *buf, size_t n, glm_comm_dtype dt, const char *what);
int glm_comm_host_all_gather(glm_comm *c, const void *send, void *recv, size_t n, glm_comm_dtype dt, const char *what);
int glm_comm_host_broadcast_i32(glm_comm *c, int32_t *ids, size_t n, const char *what);

#endif
