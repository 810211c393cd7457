/* fuzz-safetensors.c - bytes as a model.safetensors file: the header parse and its
 * validation (glm_st_open_file), then, when the file is accepted, a whole model load
 * against a fixed two-layer config.json (one dense layer, one MoE layer of 2 experts,
 * hidden size 4), so that the tensor checks against the config run too. An accepted
 * file must describe tensors inside the file that do not overlap; a rejected one must
 * get a message naming the file. A broken invariant traps. */
#include "internal.h"
#include "scratch.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char config[] =
    "{\"architectures\": [\"Glm4MoeForCausalLM\"], \"model_type\": \"glm4_moe\", \"vocab_size\": 4,"
    " \"hidden_size\": 4, \"num_hidden_layers\": 2, \"first_k_dense_replace\": 1, \"intermediate_size\": 4,"
    " \"moe_intermediate_size\": 4, \"n_routed_experts\": 2, \"num_experts_per_tok\": 1, \"n_shared_experts\": 1,"
    " \"num_attention_heads\": 1, \"num_key_value_heads\": 1, \"head_dim\": 4, \"partial_rotary_factor\": 0.5,"
    " \"use_qk_norm\": false, \"attention_bias\": false, \"eos_token_id\": [1]}";

static char dir[64], path[128];

/* Removes the scratch folder at exit. */
static void cleanup(void) {
    char p[128];
    unlink(path);
    snprintf(p, sizeof p, "%s/config.json", dir);
    unlink(p);
    rmdir(dir);
}

/* Traps unless the accepted set's tensors lie inside the file, without overlaps. */
static void check_set(const glm_st_set *s, size_t file_size) {
    size_t n = glm_st_count(s);
    for (size_t i = 0; i < n; i++) {
        const glm_st_tensor *t = glm_st_at(s, i);
        uint64_t bytes = glm_dtype_size(t->dtype);
        if (t->n_dims < 0 || t->n_dims > 4 || t->begin > t->end || t->end > file_size) __builtin_trap();
        for (int d = 0; d < t->n_dims; d++)
            if (t->shape[d] < 0 || __builtin_mul_overflow(bytes, (uint64_t)t->shape[d], &bytes)) __builtin_trap();
        if (bytes != t->end - t->begin || glm_st_find(s, t->name) != t) __builtin_trap();
        if (bytes) {
            volatile const unsigned char *p = t->data;   /* the mapping must hold these bytes */
            (void)p[0];
            (void)p[bytes - 1];
        }
        for (size_t j = 0; j < i && n <= 256; j++) {
            const glm_st_tensor *u = glm_st_at(s, j);
            if (t->end > t->begin && u->end > u->begin && t->begin < u->end && u->begin < t->end) __builtin_trap();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!dir[0]) {
        char p[128];
        scratch_dir(dir, sizeof dir, "st");
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        snprintf(p, sizeof p, "%s/config.json", dir);
        if (put_file(p, config, sizeof config - 1)) abort();
        atexit(cleanup);
    }
    if (put_file(path, data, size)) abort();
    glm_st_set *s = NULL;
    int rc = glm_st_open_file(path, &s);
    if (rc != GLM_OK) {
        if (rc >= 0 || s || !strstr(glm_last_error(), path)) __builtin_trap();
        return 0;
    }
    check_set(s, size);
    glm_st_close(s);
    glm_model *m = NULL;
    rc = glm_model_load(dir, NULL, &m);
    if (rc != GLM_OK && (rc >= 0 || m || !strstr(glm_last_error(), dir))) __builtin_trap();
    glm_model_free(m);
    return 0;
}
