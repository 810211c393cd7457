/* backend-cuda-none.c - the CUDA entry points of a build without nvcc: they fail
 * loudly, so `--device cuda` on such a build is a clear error. */
#include "backend.h"

int glm_backend_cuda_new(glm_model *model, const glm_ctx_params *p, glm_backend **out) {
    (void)model; (void)p;
    *out = NULL;
    return glm_err(GLM_ERR_NOT_IMPLEMENTED, "CUDA backend not implemented in this build (built without nvcc); use --device cpu");
}

int glm_cuda_available(void) { return 0; }
