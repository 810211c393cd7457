/* backend-cuda-none.c - the CUDA entry points of a build without nvcc: they fail
 * loudly, so `--device cuda` on such a build is a clear error. */
#include "backend.h"

int glm_backend_cuda_new(glm_model *model, const glm_ctx_params *p, glm_backend **out) {
    (void)model; (void)p;
    *out = NULL;
    return glm_err(GLM_ERR_NOT_IMPLEMENTED, "CUDA backend not implemented in this build (built without nvcc); use --device cpu");
}

int glm_cuda_available(void) { return 0; }

int glm_cuda_device_count(void) { return 0; }

int glm_cuda_check(void) {
    return glm_err(GLM_ERR_NOT_IMPLEMENTED, "CUDA backend not implemented in this build (built without nvcc); use --device cpu");
}

int glm_cuda_mem_info(int gpu, uint64_t *free_b, uint64_t *total_b) {
    *free_b = *total_b = 0;
    return glm_err(GLM_ERR_NOT_IMPLEMENTED, "GPU %d: CUDA not implemented in this build (built without nvcc)", gpu);
}

uint64_t glm_backend_cuda_weight_bytes(glm_model *m) { (void)m; return 0; }
