// read-ceiling.cu - how fast a kernel that only reads can stream buffers of the sizes
// one decode step reads (16 MB to 1 GB): the ceiling for one kernel per product
// (docs/PERF.md, run 13). Not part of the build or the tests.
//
//   nvcc -O3 -gencode=arch=compute_90a,code=sm_90a scripts/probes/read-ceiling.cu -o /tmp/read-ceiling
//   /tmp/read-ceiling
#include <cstdint>
#include <cstdio>

#define CK(x)                                                                                 \
    do {                                                                                      \
        cudaError_t e_ = (x);                                                                 \
        if (e_ != cudaSuccess) {                                                              \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            return 1;                                                                         \
        }                                                                                     \
    } while (0)

__device__ __forceinline__ uint4 ld_stream(const uint4 *p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

// U 16-byte loads a thread over a full grid; the xor keeps the loads alive.
template <int U>
__global__ void read_kernel(const uint4 *p, size_t n, unsigned *out) {
    const size_t base = (size_t)blockIdx.x * blockDim.x * U + threadIdx.x;
    unsigned acc = 0;
#pragma unroll
    for (int u = 0; u < U; u++) {
        const size_t i = base + (size_t)u * blockDim.x;
        if (i < n) {
            const uint4 v = ld_stream(p + i);
            acc ^= v.x ^ v.y ^ v.z ^ v.w;
        }
    }
    if (acc == 0x12345678u) out[blockIdx.x] = acc;
}

int main() {
    const size_t maxb = 1024ull << 20;
    uint8_t *buf;
    unsigned *out;
    CK(cudaMalloc(&buf, maxb));
    CK(cudaMalloc(&out, 1 << 24));
    CK(cudaMemset(buf, 1, maxb));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    const size_t sizes[] = {16ull << 20, 32ull << 20, 64ull << 20, 128ull << 20, 256ull << 20, 1024ull << 20};
    for (size_t sz : sizes) {
        const int reps = 20, copies = maxb / sz < 4 ? (int)(maxb / sz) : 4;  // rotate so that L2 holds none
        const size_t n = sz / 16;
        float best = 1e9f;
        for (int r = 0; r < 3; r++) {
            CK(cudaEventRecord(a));
            for (int i = 0; i < reps; i++)
                read_kernel<4><<<(unsigned)((n + 1023) / 1024), 256>>>((const uint4 *)(buf + (i % copies) * sz), n, out);
            CK(cudaGetLastError());
            CK(cudaEventRecord(b));
            CK(cudaEventSynchronize(b));
            float ms;
            CK(cudaEventElapsedTime(&ms, a, b));
            if (ms / reps < best) best = ms / reps;
        }
        printf("read %5zu MB: %7.1f us  %5.0f GB/s\n", sz >> 20, best * 1e3, sz / best / 1e6);
    }
    return 0;
}
