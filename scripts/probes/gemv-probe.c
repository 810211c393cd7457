/* gemv-probe.c - the decode weight products of a GLM-4.7 layer timed alone: the FP8
 * GEMV's default path ("mma" column: the tensor cores from two tokens, the bulk-copy
 * ring at one) and its CUDA-core register loop (GLM_CU_GEMV_CUDA_CORES |
 * GLM_CU_GEMV_NO_BULK), the FP8 MoE MMA kernel, and BF16 weights of the same shapes,
 * at 1, 2, 4 and 8 tokens, with the largest difference between the two GEMV paths
 * (docs/PERF.md, runs 13 and 14). Weights in four rotating copies so that L2 holds
 * none. Not part of the build or the tests.
 *
 *   make build/lib/libglm.a
 *   cc -O2 -Ilib -Iggml-free-kernels -I/usr/local/cuda/include scripts/probes/gemv-probe.c build/lib/libglm.a \
 *      -L/usr/local/cuda/lib64 -lcublasLt -lcudart -lstdc++ -lm -lutf8proc -ldl -lrt -pthread -o /tmp/gemv-probe
 *   /tmp/gemv-probe [1|2 [TMAX]]  (1: channel scales, 2: 128x128 block scales; tokens 1..TMAX, default 8) */
#include "kernels.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

const char *glm_last_error(void);

#define NC 4  /* weight copies */

typedef struct {
    glm_cu_mat w[NC], u[NC];
    int glu, T, mma;
    unsigned flags;
    float *x, *y;
    uint8_t *xq;
    float *xs;
    glm_cu_groups *g;
} job;

static int run(const job *j, int c) {
    const glm_cu_mat *u = j->glu ? &j->u[c] : NULL;
    if (j->mma) return glm_cu_gemm_fp8_mma(&j->w[c], u, j->xq, j->xs, j->y, j->w[c].N, j->T, j->g, j->g != NULL, 0);
    return glm_cu_gemv(&j->w[c], u, j->x, j->w[c].K, NULL, j->y, j->w[c].N, j->T, j->g, j->g != NULL, j->flags, 0);
}

static float time_us(const job *j) {
    static cudaEvent_t a, b;
    if (!a) { cudaEventCreate(&a); cudaEventCreate(&b); }
    for (int c = 0; c < NC; c++)
        if (run(j, c)) { fprintf(stderr, "%s\n", glm_last_error()); exit(1); }
    cudaEventRecord(a, 0);
    for (int r = 0; r < 40; r++) run(j, r % NC);
    cudaEventRecord(b, 0);
    cudaEventSynchronize(b);
    float ms;
    cudaEventElapsedTime(&ms, a, b);
    return ms / 40 * 1000;
}

static void make_mat(glm_cu_mat *m, int N, int K, int E, int dtype, int sk, uint64_t seed) {
    const size_t esz = dtype == GLM_CU_FP8 ? 1 : 2, n = (size_t)N * K * E;
    const int sld = glm_cu_block_ld(K);
    const size_t per = sk == GLM_CU_SCALE_CHANNEL ? (size_t)N : sk == GLM_CU_SCALE_BLOCK ? (size_t)((N + 127) / 128) * sld : 0;
    void *d = NULL;
    float *s = NULL;
    if (cudaMalloc(&d, n * esz) != cudaSuccess || (per && cudaMalloc((void **)&s, per * E * 4) != cudaSuccess)) {
        fprintf(stderr, "out of GPU memory\n");
        exit(1);
    }
    glm_cu_fill_random(d, dtype, n, 1, seed, 0);
    if (per) glm_cu_fill_uniform(s, per * E, 0.001f, 0.002f, seed + 7, 0);
    const glm_cu_mat r = {d, s, (long long)((size_t)N * K * esz), (long long)per, dtype, sk, N, K, sld};
    *m = r;
}

static void free_mat(glm_cu_mat *m) {
    cudaFree((void *)m->data);
    if (m->scale) cudaFree((void *)m->scale);
}

int main(int argc, char **argv) {
    const int sk = argc > 1 ? atoi(argv[1]) : GLM_CU_SCALE_CHANNEL, tmax = argc > 2 ? atoi(argv[2]) : 8;
    float *x, *y, *xs;
    uint8_t *xq;
    cudaMalloc((void **)&x, 64 << 20);
    cudaMalloc((void **)&y, 64 << 20);
    cudaMalloc((void **)&xq, 16 << 20);
    cudaMalloc((void **)&xs, 4 << 20);
    glm_cu_fill_uniform(x, 16 << 20, -1, 1, 99, 0);
    glm_cu_fill_random(xq, GLM_CU_FP8, 16 << 20, 1, 98, 0);
    glm_cu_fill_uniform(xs, 1 << 20, 0.01f, 0.02f, 97, 0);
    /* groups: every token of the batch routed to the same 8 experts */
    const int E = 160, pick[8] = {3, 17, 40, 77, 90, 120, 140, 159};
    int32_t act[160] = {0}, off[161], rows[64] = {0}, na = 8, *d_act, *d_off, *d_rows, *d_na;
    for (int i = 0; i < 8; i++) act[i] = pick[i];
    cudaMalloc((void **)&d_act, sizeof act);
    cudaMalloc((void **)&d_off, sizeof off);
    cudaMalloc((void **)&d_rows, sizeof rows);
    cudaMalloc((void **)&d_na, 4);
    cudaMemcpy(d_act, act, sizeof act, cudaMemcpyHostToDevice);
    cudaMemcpy(d_na, &na, 4, cudaMemcpyHostToDevice);
    const struct { const char *name; int N, K, E, glu, grouped; } sh[] = {
        {"q/k/v 14336x5120", 14336, 5120, 1, 0, 0},        {"o 5120x12288", 5120, 12288, 1, 0, 0},
        {"gate+up 2x12288x5120", 12288, 5120, 1, 1, 0},    {"down 5120x12288", 5120, 12288, 1, 0, 0},
        {"experts gate+up 8x2x1536x5120", 1536, 5120, E, 1, 1}, {"experts down 8x5120x1536", 5120, 1536, E, 0, 1},
        {"shared gate+up 2x1536x5120", 1536, 5120, 1, 1, 0},    {"shared down 5120x1536", 5120, 1536, 1, 0, 0},
    };
    printf("%-30s %2s %8s %8s %8s %8s %10s\n", "product", "T", "mma us", "cores us", "moe-mma", "bf16 us", "max diff");
    for (int T = 1; T <= tmax; T *= 2) {
        /* grouped: token t goes to all 8 experts, so each expert holds T rows */
        for (int e = 0, c = 0; e <= E; e++) {
            off[e] = c;
            for (int i = 0; i < 8; i++) if (pick[i] == e) c += T;
        }
        for (int i = 0; i < 8 * T; i++) rows[i] = i % T;
        cudaMemcpy(d_off, off, sizeof off, cudaMemcpyHostToDevice);
        cudaMemcpy(d_rows, rows, sizeof rows, cudaMemcpyHostToDevice);
        glm_cu_groups G = {d_act, d_na, d_off, d_rows, 8, T};
        for (size_t s = 0; s < sizeof sh / sizeof sh[0]; s++) {
            job j = {0};
            j.glu = sh[s].glu; j.T = T; j.x = x; j.y = y; j.xq = xq; j.xs = xs; j.g = sh[s].grouped ? &G : NULL;
            const double bytes = (double)sh[s].N * sh[s].K * (j.glu ? 2 : 1) * (j.g ? 8 : 1);
            for (int c = 0; c < NC; c++) {
                make_mat(&j.w[c], sh[s].N, sh[s].K, sh[s].E, GLM_CU_FP8, sk, 1 + c);
                if (j.glu) make_mat(&j.u[c], sh[s].N, sh[s].K, sh[s].E, GLM_CU_FP8, sk, 11 + c);
            }
            const size_t ny = (size_t)T * sh[s].N * (j.g ? 8 : 1);
            float *h0 = malloc(ny * 4), *h1 = malloc(ny * 4);
            j.flags = GLM_CU_GEMV_CUDA_CORES | GLM_CU_GEMV_NO_BULK;
            run(&j, 0);
            cudaMemcpy(h0, y, ny * 4, cudaMemcpyDeviceToHost);
            const float t_cores = time_us(&j);
            j.flags = 0;
            run(&j, 0);
            cudaMemcpy(h1, y, ny * 4, cudaMemcpyDeviceToHost);
            const float t_mma = time_us(&j);
            double md = 0, mx = 0;
            for (size_t i = 0; i < ny; i++) {
                const double d = fabs(h0[i] - h1[i]);
                if (!(d <= md)) md = d;
                if (fabs(h0[i]) > mx) mx = fabs(h0[i]);
            }
            j.mma = 1;
            const float t_moe = time_us(&j);
            j.mma = 0;
            for (int c = 0; c < NC; c++) { free_mat(&j.w[c]); if (j.glu) free_mat(&j.u[c]); }
            float t_bf16 = NAN;
            if (!j.g) {
                for (int c = 0; c < NC; c++) {
                    make_mat(&j.w[c], sh[s].N, sh[s].K, 1, GLM_CU_BF16, GLM_CU_SCALE_NONE, 21 + c);
                    if (j.glu) make_mat(&j.u[c], sh[s].N, sh[s].K, 1, GLM_CU_BF16, GLM_CU_SCALE_NONE, 31 + c);
                }
                t_bf16 = time_us(&j);
                for (int c = 0; c < NC; c++) { free_mat(&j.w[c]); if (j.glu) free_mat(&j.u[c]); }
            }
            printf("%-30s %2d %8.1f %8.1f %8.1f %8.1f %10.2e   (FP8 %.0f MB; mma %.0f, cores %.0f GB/s)\n", sh[s].name, T,
                   t_mma, t_cores, t_moe, t_bf16, md / mx, bytes / 1e6, bytes / t_mma / 1e3, bytes / t_cores / 1e3);
            free(h0);
            free(h1);
        }
    }
    const cudaError_t e = cudaDeviceSynchronize();
    printf("%s\n", cudaGetErrorString(e));
    return e != cudaSuccess;
}
