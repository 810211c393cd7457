/* fuzz-config.c - bytes as config.json through the hparams parser: an accepted config
 * must satisfy every relation the engine relies on, a rejected one must get a message
 * naming the file. A broken invariant traps. */
#include "internal.h"

#include <stdint.h>
#include <string.h>

/* Traps unless hp satisfies what the engine assumes of a parsed config. */
static void check(const glm_hparams *hp) {
    int moe = hp->n_dense_layer < hp->n_layer;
    if (hp->n_vocab < 1 || hp->n_embd < 1 || hp->n_layer < 1 || hp->n_head < 1) __builtin_trap();
    if (hp->n_head_kv < 1 || hp->n_head % hp->n_head_kv) __builtin_trap();
    if (hp->head_dim < 2 || hp->head_dim % 2 || (int64_t)hp->n_head * hp->head_dim > (1 << 30)) __builtin_trap();
    if (hp->n_rot < 2 || hp->n_rot % 2 || hp->n_rot > hp->head_dim) __builtin_trap();
    if (hp->n_dense_layer < 0 || hp->n_dense_layer > hp->n_layer) __builtin_trap();
    if (hp->n_dense_layer > 0 && hp->n_ff < 1) __builtin_trap();
    if (moe && (hp->n_expert < 1 || hp->n_expert_used < 1 || hp->n_expert_used > hp->n_expert || hp->n_ff_exp < 1))
        __builtin_trap();
    if (hp->n_expert_shared < 0 || hp->n_ctx_train < 1) __builtin_trap();
    if (!(hp->rms_eps > 0) || !(hp->rope_theta > 0) || !(hp->routed_scale > 0)) __builtin_trap();
    if (hp->n_eos < 0 || hp->n_eos > GLM_MAX_EOS) __builtin_trap();
    for (int i = 0; i < hp->n_eos; i++)
        if (hp->eos[i] < 0 || hp->eos[i] >= hp->n_vocab) __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    glm_hparams hp;
    int rc = glm_hparams_parse((const char *)data, size, "fuzz/config.json", &hp);
    if (rc == GLM_OK) check(&hp);
    else if (rc >= 0 || !strstr(glm_last_error(), "fuzz/config.json")) __builtin_trap();
    return 0;
}
