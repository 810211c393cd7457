/* tp.c - one model over n_tp tensor-parallel ranks in this process (docs/PARALLEL.md).
 *
 * Rank r of N holds a slice of the model, made of views into the loaded weights (no
 * copies: a row slice moves the start, a column slice keeps the stored row stride):
 *   attention   KV heads [r*Hkv/N, (r+1)*Hkv/N) and their query heads: rows of q/k/v and
 *               their biases, columns of o_proj; q/k norms whole (per head, the same for all)
 *   dense MLP   rows [r*F/N, (r+1)*F/N) of gate and up, those columns of down
 *   shared exp. the same split of its intermediate rows
 *   routed exp. GLM_MOE_SPLIT_EP: experts [r*E/N, (r+1)*E/N) whole (the others empty: rows 0);
 *               GLM_MOE_SPLIT_TP: rows [r*Fe/N, (r+1)*Fe/N) of every expert (floor bounds: the
 *               slices differ by at most one row; a rank may hold none when Fe < N)
 *   router, embeddings, norms: whole on every rank
 *   lm_head     vocabulary rows [r*V/N, (r+1)*V/N) (any V)
 * Every rank runs the same forward (models/glm4-moe.c) on its slice: its partial sums
 * meet in two all-reduces a layer, and the logits rows in an all-gather. On the CPU each
 * rank is a CPU backend whose thread pool has n_threads / N threads, driven by a thread
 * of its own during a pass; the communicator is the local kind (sums in host memory in
 * rank order). */
#include "backend.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct glm_tp {
    int n;                     /* ranks in this process */
    int first, world;          /* global rank of the first; ranks in all processes */
    int dist;                  /* one process a rank (params.dist_init) */
    int gpu[GLM_COMM_MAX_RANKS];/* CUDA: each local rank's GPU */
    glm_comm_group *group;
    glm_model *views;          /* [n] each rank's slice (layers and expert arrays owned here) */
    glm_backend **be;          /* [n] */
};

int64_t glm_tp_part(int64_t n, int r, int N) { return n * r / N; }

/* Short for glm_tp_part in the slicing below. */
static int64_t part(int64_t n, int r, int N) { return glm_tp_part(n, r, N); }

int glm_tp_check(const glm_model *m, const glm_ctx_params *p) {
    const glm_hparams *hp = &m->hp;
    const int N = p->n_tp;
    if (N < 0) return glm_err(GLM_ERR_ARG, "n_tp %d: the number of tensor-parallel ranks must be at least 1", N);
    if (p->moe_split != GLM_MOE_SPLIT_TP && p->moe_split != GLM_MOE_SPLIT_EP)
        return glm_err(GLM_ERR_ARG, "moe_split %d: not a split (GLM_MOE_SPLIT_TP or GLM_MOE_SPLIT_EP)", p->moe_split);
    if (N <= 1) return GLM_OK;
    if (N > GLM_COMM_MAX_RANKS) return glm_err(GLM_ERR_ARG, "n_tp %d: at most %d ranks", N, GLM_COMM_MAX_RANKS);
    if (hp->n_head_kv % N)
        return glm_err(GLM_ERR_ARG, "n_tp %d does not divide the model's %d KV heads (replicating KV heads is not built)",
                       N, hp->n_head_kv);
    if (p->moe_split == GLM_MOE_SPLIT_EP && hp->n_expert % N)
        return glm_err(GLM_ERR_ARG, "moe_split ep: n_tp %d does not divide the model's %d routed experts (use the tp split)",
                       N, hp->n_expert);
    if (p->device == GLM_DEVICE_CUDA && p->gpus) {
        if (p->n_gpus < 1 || p->n_gpus > GLM_COMM_MAX_RANKS)
            return glm_err(GLM_ERR_ARG, "n_gpus %d: 1 to %d GPUs", p->n_gpus, GLM_COMM_MAX_RANKS);
        for (int i = 0; i < p->n_gpus; i++)
            if (p->gpus[i] < 0) return glm_err(GLM_ERR_ARG, "gpus[%d] = %d is not a GPU index", i, p->gpus[i]);
    }
    return GLM_OK;
}

/* Fills v with rank r's slice of m: views into m's weights; v->layers and their expert
 * arrays are allocated (freed by slice_free); everything else is borrowed from m. */
static int slice_model(const glm_model *m, int r, int N, int split, glm_model *v) {
    const glm_hparams *hp = &m->hp;
    *v = *m;
    v->has_mtp = 0;  /* the slices cover layers 0..n_layer-1: drafting with ranks is refused */
    v->layers = calloc((size_t)hp->n_layer, sizeof *v->layers);
    if (!v->layers) return glm_err(GLM_ERR_OOM, "out of memory");
    const int64_t hd = hp->head_dim, G = hp->n_head / hp->n_head_kv;
    const int64_t kv0 = part(hp->n_head_kv, r, N) * hd, kv1 = part(hp->n_head_kv, r + 1, N) * hd; /* k/v rows */
    const int64_t q0 = kv0 * G, q1 = kv1 * G;                                                     /* q rows, o columns */
    const int64_t F = hp->n_ff, Fe = hp->n_ff_exp, Fs = (int64_t)hp->n_ff_exp * hp->n_expert_shared;
    const int E = hp->n_expert, e0 = (int)part(E, r, N), e1 = (int)part(E, r + 1, N);
    /* the rank's geometry: its heads; the widest slice of each intermediate dimension */
    v->hp.n_head = hp->n_head / N;
    v->hp.n_head_kv = hp->n_head_kv / N;
    v->hp.n_ff = (int)((F + N - 1) / N);
    if (split == GLM_MOE_SPLIT_TP) v->hp.n_ff_exp = (int)((Fe + N - 1) / N);
    v->lm_head = glm_weight_rows(&m->lm_head, part(hp->n_vocab, r, N), part(hp->n_vocab, r + 1, N));
    for (int il = 0; il < hp->n_layer; il++) {
        const glm_layer *L = &m->layers[il];
        glm_layer *R = &v->layers[il];
        *R = *L;
        R->exp_gate = R->exp_up = R->exp_down = NULL;
        R->wq = glm_weight_rows(&L->wq, q0, q1);                     /* [Q/N, D] */
        R->wk = glm_weight_rows(&L->wk, kv0, kv1);                   /* [KV/N, D] */
        R->wv = glm_weight_rows(&L->wv, kv0, kv1);
        R->wo = glm_weight_cols(&L->wo, q0, q1);                     /* [D, Q/N] */
        if (L->bq.name) R->bq = glm_weight_cols(&L->bq, q0, q1);
        if (L->bk.name) R->bk = glm_weight_cols(&L->bk, kv0, kv1);
        if (L->bv.name) R->bv = glm_weight_cols(&L->bv, kv0, kv1);
        if (il < hp->n_dense_layer) {
            R->ffn_gate = glm_weight_rows(&L->ffn_gate, part(F, r, N), part(F, r + 1, N));  /* [F/N, D] */
            R->ffn_up = glm_weight_rows(&L->ffn_up, part(F, r, N), part(F, r + 1, N));
            R->ffn_down = glm_weight_cols(&L->ffn_down, part(F, r, N), part(F, r + 1, N)); /* [D, F/N] */
            continue;
        }
        R->exp_gate = calloc((size_t)E * 3, sizeof(glm_weight));
        if (!R->exp_gate) return glm_err(GLM_ERR_OOM, "out of memory");
        R->exp_up = R->exp_gate + E;
        R->exp_down = R->exp_up + E;
        for (int e = 0; e < E; e++) {
            if (split == GLM_MOE_SPLIT_EP) {
                if (e < e0 || e >= e1) continue;                     /* another rank's: rows 0 */
                R->exp_gate[e] = L->exp_gate[e];
                R->exp_up[e] = L->exp_up[e];
                R->exp_down[e] = L->exp_down[e];
            } else {
                R->exp_gate[e] = glm_weight_rows(&L->exp_gate[e], part(Fe, r, N), part(Fe, r + 1, N));
                R->exp_up[e] = glm_weight_rows(&L->exp_up[e], part(Fe, r, N), part(Fe, r + 1, N));
                R->exp_down[e] = glm_weight_cols(&L->exp_down[e], part(Fe, r, N), part(Fe, r + 1, N));
            }
        }
        if (hp->n_expert_shared > 0) {
            R->sh_gate = glm_weight_rows(&L->sh_gate, part(Fs, r, N), part(Fs, r + 1, N));
            R->sh_up = glm_weight_rows(&L->sh_up, part(Fs, r, N), part(Fs, r + 1, N));
            R->sh_down = glm_weight_cols(&L->sh_down, part(Fs, r, N), part(Fs, r + 1, N));
        }
    }
    return GLM_OK;
}

/* Frees what slice_model allocated. */
static void slice_free(glm_model *v) {
    if (!v->layers) return;
    for (int il = 0; il < v->hp.n_layer; il++) free(v->layers[il].exp_gate);
    free(v->layers);
    v->layers = NULL;
}

int glm_tp_gpu(const glm_ctx_params *p, int r) {
    if (p->gpus && p->n_gpus > 0) return p->gpus[r % p->n_gpus];
    const int n = glm_cuda_device_count();
    return n > 0 ? r % n : 0;
}

/* CUDA: checks that each GPU has room for the weights of the ranks placed on it (and
 * 1 GiB a rank for activations and the KV cache), naming the GPU and both figures. */
static int check_gpu_memory(glm_tp *tp) {
    uint64_t need[GLM_COMM_MAX_RANKS] = {0};
    int gpu[GLM_COMM_MAX_RANKS], ranks[GLM_COMM_MAX_RANKS] = {0}, n = 0;
    for (int r = 0; r < tp->n; r++) {
        const int g = tp->gpu[r];
        int i = 0;
        while (i < n && gpu[i] != g) i++;
        if (i == n) gpu[n++] = g;
        need[i] += glm_backend_cuda_weight_bytes(&tp->views[r]) + (1ull << 30);
        ranks[i]++;
    }
    for (int i = 0; i < n; i++) {
        uint64_t fr = 0, tot = 0;
        int rc = glm_cuda_mem_info(gpu[i], &fr, &tot);
        if (rc) return rc;
        if (need[i] > fr)
            return glm_err(GLM_ERR_OOM, "GPU %d: its %d rank%s need %.2f GiB (weights and 1 GiB a rank for activations "
                           "and KV pages), %.2f GiB free of %.2f GiB",
                           gpu[i], ranks[i], ranks[i] == 1 ? "" : "s", need[i] / 1073741824.0, fr / 1073741824.0,
                           tot / 1073741824.0);
    }
    return GLM_OK;
}

typedef struct {
    glm_tp *tp;
    const glm_ctx_params *p;
    int r, rc;
    char msg[640];
} rank_load;

/* The ranks' upload progress, summed over the ranks for the caller's callback. */
typedef struct {
    pthread_mutex_t mu;
    const glm_ctx_params *p;
    uint64_t done[GLM_COMM_MAX_RANKS], total;
    int cancelled;
} load_progress;

typedef struct { load_progress *lp; int r; } rank_progress_arg;

static int rank_progress(uint64_t done, uint64_t total, void *user) {
    rank_progress_arg *a = user;
    load_progress *lp = a->lp;
    (void)total;
    pthread_mutex_lock(&lp->mu);
    lp->done[a->r] = done;
    uint64_t sum = 0;
    for (int r = 0; r < GLM_COMM_MAX_RANKS; r++) sum += lp->done[r];
    if (!lp->cancelled && lp->p->progress(sum, lp->total, lp->p->progress_user)) lp->cancelled = 1;
    const int stop = lp->cancelled;
    pthread_mutex_unlock(&lp->mu);
    return stop;
}

/* Makes rank r's CUDA backend on its GPU: the upload of its slice. Returns NULL. */
static void *load_main(void *arg) {
    rank_load *a = arg;
    glm_ctx_params rp = *a->p;
    rp.gpu = a->tp->gpu[a->r];
    a->rc = glm_backend_cuda_new(&a->tp->views[a->r], &rp, &a->tp->be[a->r]);
    if (a->rc) snprintf(a->msg, sizeof a->msg, "%s", glm_last_error());
    return NULL;
}

/* CUDA: every rank's backend, loaded in parallel (one thread a rank). */
static int load_cuda_ranks(glm_tp *tp, const glm_ctx_params *p) {
    rank_load a[GLM_COMM_MAX_RANKS];
    pthread_t th[GLM_COMM_MAX_RANKS];
    int started[GLM_COMM_MAX_RANKS] = {0};
    /* one progress over all ranks: each rank reports its own bytes into the sum */
    load_progress lp;
    memset(&lp, 0, sizeof lp);
    pthread_mutex_init(&lp.mu, NULL);
    lp.p = p;
    rank_progress_arg pa[GLM_COMM_MAX_RANKS];
    glm_ctx_params rp[GLM_COMM_MAX_RANKS];
    for (int r = 0; r < tp->n; r++) {
        lp.total += glm_backend_cuda_weight_bytes(&tp->views[r]);
        pa[r] = (rank_progress_arg){ &lp, r };
        rp[r] = *p;
        if (p->progress) { rp[r].progress = rank_progress; rp[r].progress_user = &pa[r]; }
    }
    for (int r = 0; r < tp->n; r++) a[r] = (rank_load){ tp, &rp[r], r, 0, "" };
    for (int r = 1; r < tp->n; r++) started[r] = pthread_create(&th[r], NULL, load_main, &a[r]) == 0;
    load_main(&a[0]);
    for (int r = 1; r < tp->n; r++) {
        if (started[r]) pthread_join(th[r], NULL);
        else load_main(&a[r]);
    }
    pthread_mutex_destroy(&lp.mu);
    for (int r = 0; r < tp->n; r++)
        if (a[r].rc) return glm_err(a[r].rc, "rank %d (GPU %d): %s", tp->first + r, tp->gpu[r], a[r].msg);
    return GLM_OK;
}

/* Several processes: this process's place from RANK, WORLD_SIZE and LOCAL_RANK, and the
 * NCCL id from global rank 0 through p->dist_init. */
static int dist_setup(glm_tp *tp, const glm_ctx_params *p, uint8_t id[GLM_COMM_ID_BYTES]) {
    glm_comm_dist d;
    int rc = glm_comm_dist_from_env(&d);
    if (rc) return rc;
    if (p->device != GLM_DEVICE_CUDA)
        return glm_err(GLM_ERR_ARG, "dist_init %s: one process a rank needs CUDA and NCCL (with the CPU backend the "
                       "ranks are threads of one process: n_tp)", p->dist_init);
    if (p->n_tp > 1 && p->n_tp != d.world_size)
        return glm_err(GLM_ERR_ARG, "n_tp %d differs from WORLD_SIZE %d (with dist_init each process is one rank)",
                       p->n_tp, d.world_size);
    tp->dist = 1;
    tp->n = 1;
    tp->first = d.rank;
    tp->world = d.world_size;
    tp->gpu[0] = p->gpus && p->n_gpus > 0 ? p->gpus[d.local_rank % p->n_gpus] : d.local_rank;
    if (d.rank == 0 && (rc = glm_comm_unique_id(id))) return rc;
    const glm_comm_params dp = glm_comm_default_params();
    return glm_comm_rendezvous(p->dist_init, d.rank, d.world_size, dp.timeout_s, id);
}

int glm_tp_new(glm_model *model, const glm_ctx_params *p, glm_tp **out) {
    *out = NULL;
    int rc;
    const int cuda = p->device == GLM_DEVICE_CUDA;
    if (cuda && (rc = glm_cuda_check())) return rc;
    glm_tp *tp = calloc(1, sizeof *tp);
    if (!tp) return glm_err(GLM_ERR_OOM, "out of memory");
    uint8_t id[GLM_COMM_ID_BYTES] = {0};
    if (p->dist_init) {
        if ((rc = dist_setup(tp, p, id))) { glm_tp_free(tp); return rc; }
    } else {
        tp->world = p->n_tp > 1 ? p->n_tp : 1;
        tp->n = p->tp_solo ? 1 : tp->world;
        for (int r = 0; r < tp->n; r++) tp->gpu[r] = glm_tp_gpu(p, r);
    }
    const int N = tp->world;
    glm_ctx_params cq = *p;   /* the checks at the world's size (WORLD_SIZE with dist_init) */
    cq.n_tp = N;
    if ((rc = glm_tp_check(model, &cq))) { glm_tp_free(tp); return rc; }
    tp->views = calloc((size_t)tp->n, sizeof *tp->views);
    tp->be = calloc((size_t)tp->n, sizeof *tp->be);
    if (!tp->views || !tp->be) { glm_tp_free(tp); return glm_err(GLM_ERR_OOM, "out of memory"); }
    for (int r = 0; r < tp->n; r++)
        if ((rc = slice_model(model, tp->first + r, N, p->moe_split, &tp->views[r]))) { glm_tp_free(tp); return rc; }
    if (!(p->tp_solo && !tp->dist)) {
        glm_comm_params cp = glm_comm_default_params();
        cp.kind = cuda ? GLM_COMM_NCCL : GLM_COMM_LOCAL;
        cp.n_ranks = tp->n;
        cp.world_size = N;
        cp.first_rank = tp->first;
        cp.devices = cuda ? tp->gpu : NULL;
        cp.unique_id = tp->dist ? id : NULL;
        if ((rc = glm_comm_group_new(&cp, &tp->group))) { glm_tp_free(tp); return rc; }
    }
    if (cuda) {
        if ((rc = check_gpu_memory(tp)) || (rc = load_cuda_ranks(tp, p))) { glm_tp_free(tp); return rc; }
    } else {
        /* the threads are shared out between the ranks, at least one each */
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        int threads = p->n_threads > 0 ? p->n_threads : cores > 0 ? (int)cores : 1;
        glm_ctx_params rp = *p;
        rp.n_threads = threads / N > 0 ? threads / N : 1;
        for (int r = 0; r < tp->n; r++)
            if ((rc = glm_backend_cpu_new(&tp->views[r], &rp, &tp->be[r]))) { glm_tp_free(tp); return rc; }
    }
    for (int r = 0; tp->group && r < tp->n; r++) tp->be[r]->comm = glm_comm_get(tp->group, r);
    *out = tp;
    return GLM_OK;
}

/* One process a rank: every process takes the fewest pages any of them fits (the page
 * tables must stay the same everywhere), gathered through the communicator. */
static int agree_pages(glm_tp *tp, int pages) {
    glm_backend *be = tp->be[0];
    if (!be->ops->read || !be->ops->write) return 0;
    float *send = be->ops->alloc(be, sizeof(float)), *recv = be->ops->alloc(be, (size_t)tp->world * sizeof(float));
    float *all = malloc((size_t)tp->world * sizeof(float));
    const float mine = (float)pages;
    int ok = send && recv && all && !be->ops->write(be, send, &mine, 1) &&
             !glm_comm_all_gather(be->comm, send, recv, 1, GLM_COMM_F32, NULL) && !glm_comm_wait(be->comm, NULL) &&
             !be->ops->read(be, all, recv, (size_t)tp->world);
    for (int r = 0; ok && r < tp->world; r++)
        if (all[r] < (float)pages) pages = (int)all[r];
    free(all);
    return ok ? pages : 0;
}

int glm_tp_kv_pages_fit(glm_tp *tp, const glm_ctx_params *p) {
    int best = -1;
    for (int r = 0; r < tp->n; r++) {
        int share = 1;  /* ranks on rank r's GPU */
        if (p->device == GLM_DEVICE_CUDA)
            for (int q = 0; q < tp->n; q++) share += q != r && tp->gpu[q] == tp->gpu[r];
        const int f = tp->be[r]->ops->kv_pages_fit(tp->be[r], p) / share;
        if (best < 0 || f < best) best = f;
    }
    if (best < 0) best = 0;
    return tp->dist && tp->world > 1 ? agree_pages(tp, best) : best;
}

const char *glm_tp_comm_kind(const glm_tp *tp) {
    return tp->group ? glm_comm_kind_name(glm_comm_get(tp->group, 0)) : "none";
}

void glm_tp_free(glm_tp *tp) {
    if (!tp) return;
    for (int r = 0; tp->be && r < tp->n; r++) {
        if (!tp->be[r]) continue;
        void *fwd = tp->be[r]->fwd;
        tp->be[r]->ops->destroy(tp->be[r]);
        free(fwd);
    }
    for (int r = 0; tp->views && r < tp->n; r++) slice_free(&tp->views[r]);  /* views past n were never made */
    glm_comm_group_free(tp->group);
    free(tp->views);
    free(tp->be);
    free(tp);
}

int glm_tp_size(const glm_tp *tp) { return tp->n; }

glm_backend *glm_tp_rank(glm_tp *tp, int r) { return r >= 0 && r < tp->n ? tp->be[r] : NULL; }

int glm_tp_reserve(glm_tp *tp, int max_tokens) {
    for (int r = 0; r < tp->n; r++) {
        int rc = glm4moe_reserve(tp->be[r], max_tokens);
        if (rc) return rc;
    }
    return GLM_OK;
}

int glm_tp_kv_init(glm_tp *tp, int n_pages, glm_kv_type type) {
    for (int r = 0; r < tp->n; r++) {
        int rc = tp->be[r]->ops->kv_init(tp->be[r], n_pages, type);
        if (rc) return rc;
    }
    return GLM_OK;
}

typedef struct {
    glm_backend *be;
    const glm_plan *plan;
    float *logits;             /* rank 0: the caller's; NULL on the others */
    int rc;
    char msg[640];             /* the rank's error (thread-local messages do not cross threads) */
} rank_pass;

/* Runs one rank's forward; a rank that fails tells the others through the communicator
 * (so none waits for it) and keeps its message. Returns NULL. */
static void *rank_main(void *arg) {
    rank_pass *rp = arg;
    rp->rc = glm4moe_forward(rp->be, rp->plan, rp->logits);
    if (rp->rc) {
        snprintf(rp->msg, sizeof rp->msg, "%s", glm_last_error());
        if (rp->be->comm) glm_comm_fail(rp->be->comm, rp->rc, rp->msg);
    }
    return NULL;
}

int glm_tp_forward(glm_tp *tp, const glm_plan *plan, float *logits_host) {
    rank_pass rp[GLM_COMM_MAX_RANKS];
    pthread_t th[GLM_COMM_MAX_RANKS];
    int started[GLM_COMM_MAX_RANKS] = {0};
    for (int r = 0; r < tp->n; r++) rp[r] = (rank_pass){ tp->be[r], plan, r == 0 ? logits_host : NULL, 0, "" };
    for (int r = 1; r < tp->n; r++) {
        if (pthread_create(&th[r], NULL, rank_main, &rp[r]) == 0) { started[r] = 1; continue; }
        rp[r].rc = GLM_ERR_OOM;
        snprintf(rp[r].msg, sizeof rp[r].msg, "could not start the thread of rank %d", r);
        glm_comm_fail(tp->be[r]->comm, rp[r].rc, rp[r].msg);
    }
    rank_main(&rp[0]);
    for (int r = 1; r < tp->n; r++)
        if (started[r]) pthread_join(th[r], NULL);
    /* rank 0's error names the rank that failed first; else the first failing rank's own */
    for (int r = 0; r < tp->n; r++)
        if (rp[r].rc) return r == 0 ? glm_err(rp[r].rc, "%s", rp[r].msg) : glm_err(rp[r].rc, "rank %d: %s", r, rp[r].msg);
    return GLM_OK;
}
