// common.cuh - device helpers shared by the kernel files: number conversions
// (FP8 E4M3 and BF16 to float), warp and block reductions, and a counter-based
// random generator for weights made on the device.
#pragma once

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <pthread.h>
#include <stdint.h>

#include "kernels.h"

#define GLM_WARP 32

__device__ __forceinline__ float silu(float g) { return g / (1.f + __expf(-g)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block; every thread gets the result. red holds >= 32 floats.
__device__ __forceinline__ float block_sum(float v, float *red) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[wid] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : 0.f;
    return warp_sum(t);
}

__device__ __forceinline__ float block_max(float v, float *red) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) red[wid] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : -INFINITY;
    return warp_max(t);
}

__device__ __forceinline__ float bf16_to_f(uint16_t h) {
    return __uint_as_float(((uint32_t)h) << 16);
}

__device__ __forceinline__ uint16_t f_to_bf16(float f) {
    __nv_bfloat16 b = __float2bfloat16_rn(f);
    return *reinterpret_cast<uint16_t *>(&b);
}

// One element of a float32 or BF16 array, as float.
__device__ __forceinline__ float ld_f(const float *p) { return *p; }
__device__ __forceinline__ float ld_f(const uint16_t *p) { return bf16_to_f(*p); }

// Two FP8 E4M3 codes (low byte first) to two floats, exact.
__device__ __forceinline__ float2 fp8x2_to_f2(uint16_t v) {
    __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)v, __NV_E4M3);
    __half2 hh = *reinterpret_cast<__half2 *>(&h);
    return __half22float2(hh);
}

__device__ __forceinline__ float fp8_to_f(uint8_t v) {
    __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)v, __NV_E4M3);
    return __half2float(*reinterpret_cast<__half *>(&h));
}

// Float to FP8 E4M3, round to nearest even, saturating at +-448.
__device__ __forceinline__ uint8_t f_to_fp8(float f) {
    return (uint8_t)__nv_cvt_float_to_fp8(f, __NV_SATFINITE, __NV_E4M3);
}

// Loads element i of a weight row as float (slow paths).
template <int WT>
__device__ __forceinline__ float load_w(const void *p, long long i) {
    if (WT == GLM_CU_FP8) return fp8_to_f(((const uint8_t *)p)[i]);
    if (WT == GLM_CU_BF16) return bf16_to_f(((const uint16_t *)p)[i]);
    return ((const float *)p)[i];
}

// splitmix64: a counter-based generator, one independent value per index.
__device__ __forceinline__ uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Uniform in [0, 1).
__device__ __forceinline__ float rand01(uint64_t seed, uint64_t i) {
    return (float)(mix64(seed * 0x100000001b3ull + i) >> 40) * (1.0f / 16777216.0f);
}

// Grouped launches: block row blockIdx.y serves the active expert of that index, whose
// rows are [off[e], off[e+1]) of the sorted order; false when there is none.
__device__ __forceinline__ bool expert_group(const int32_t *active, const int32_t *n_active, const int32_t *off,
                                             int *e, int *row0, int *cnt) {
    if ((int)blockIdx.y >= *n_active) return false;
    *e = active[blockIdx.y];
    *row0 = off[*e];
    *cnt = off[*e + 1] - *row0;
    return true;
}

// ---- shared-memory barriers and bulk copies (sm_90) ----
__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define GLM_SM90 1
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
// One arrival that also expects bytes of asynchronous copies on the barrier.
__device__ __forceinline__ void mbar_expect(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    asm volatile(
        "{\n.reg .pred done;\nWAIT_%=:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra WAIT_%=;\n}\n" ::"r"(bar), "r"(parity) : "memory");
}
// bytes (a multiple of 16) from global src to shared dst (both 16-byte aligned) by the
// copy engine, counted on bar.
__device__ __forceinline__ void bulk_g2s(uint32_t dst, const void *src, uint32_t bytes, uint32_t bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
                 ::"r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");
}
#endif

// ---- per-device facts, remembered per host thread (each GPU of a host answers for itself) ----
#define GLM_CU_MAX_DEVICES 16

// An attribute of the current device, remembered per device and host thread (slot:
// its place in the memo, one per attribute asked here); def when it cannot be read.
static inline int glm_cu_dev_attr(int slot, cudaDeviceAttr attr, int def) {
    static __thread int memo[GLM_CU_MAX_DEVICES][3];  // value + 1; 0: not asked yet
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) { cudaGetLastError(); return def; }
    if (dev < GLM_CU_MAX_DEVICES && memo[dev][slot]) return memo[dev][slot] - 1;
    if (cudaDeviceGetAttribute(&v, attr, dev) != cudaSuccess || v < 0) { cudaGetLastError(); return def; }
    if (dev < GLM_CU_MAX_DEVICES) memo[dev][slot] = v + 1;
    return v;
}

// Streaming multiprocessors of the current device (100 when unknown).
static inline int glm_cu_sm_count(void) {
    const int n = glm_cu_dev_attr(0, cudaDevAttrMultiProcessorCount, 100);
    return n > 0 ? n : 100;
}

// Compute capability of the current device as 10 * major + minor (0 when unknown).
static inline int glm_cu_arch(void) {
    const int major = glm_cu_dev_attr(1, cudaDevAttrComputeCapabilityMajor, 0);
    return major > 0 ? 10 * major + glm_cu_dev_attr(2, cudaDevAttrComputeCapabilityMinor, 0) : 0;
}

// Lets kernel fn use bytes of dynamic shared memory on the current device (a host-side
// call, legal during stream capture). The attribute belongs to the kernel and device for
// the whole process, whichever host thread sets it (tensor-parallel ranks are threads), so
// the record is one per process, under a lock, and the limit only ever rises: a thread
// asking for less must not lower what another thread's launch relies on.
static inline cudaError_t glm_cu_smem_limit(const void *fn, int bytes) {
    static struct { const void *fn; int dev, bytes; } memo[128];
    static int n_memo;
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return e;
    pthread_mutex_lock(&mu);
    int i = 0;
    while (i < n_memo && !(memo[i].fn == fn && memo[i].dev == dev)) i++;
    if (i < n_memo && memo[i].bytes >= bytes) { pthread_mutex_unlock(&mu); return cudaSuccess; }
    e = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e == cudaSuccess && i < 128) {
        memo[i].fn = fn; memo[i].dev = dev; memo[i].bytes = bytes;
        if (i == n_memo) n_memo++;
    }
    pthread_mutex_unlock(&mu);
    return e;
}

static inline unsigned glm_cu_blocks(size_t n, int per) {
    size_t b = (n + per - 1) / per;
    return (unsigned)(b > 0x7fffffff ? 0x7fffffff : (b ? b : 1));
}
