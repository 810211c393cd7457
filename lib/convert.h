/* convert.h - BF16 -> FP8 checkpoint conversion inside libglm: the row/block quantisers
 * (on the branch-free glm_f32_to_fp8e4m3 of internal.h) and the streaming,
 * multi-threaded converter glm-convert calls. Not installed. */
#ifndef GLM_CONVERT_H
#define GLM_CONVERT_H

#include "internal.h"

#include <stdint.h>
#include <string.h>

/* Quantises rows [rows, cols] (float32) to E4M3 with one scale per row: s[r] =
 * bf16(amax_r / 448) (1 for an all-zero row), q = round(w / s). Returns the index of the
 * first row holding a non-finite value, or -1. */
int64_t glm_quant_channel(const float *w, int64_t rows, int64_t cols, uint8_t *q, uint16_t *s_bf16);

/* Quantises up to 128 rows [rows, cols] (one block row) to E4M3 with one scale per
 * 128-column block: s[j] = amax_block / 448 in F32 (1 for an all-zero block), q =
 * round(w / s). Returns the index of the first row holding a non-finite value, or -1. */
int64_t glm_quant_block_row(const float *w, int64_t rows, int64_t cols, uint8_t *q, float *s);

/* Is this tensor (by name) a Linear weight that the FP8 formats quantise? */
int glm_convert_is_quantized(const char *name);

/* Converts the BF16 checkpoint in in_dir to fmt (GLM_FMT_FP8_CHANNEL or GLM_FMT_FP8_BLOCK)
 * into out_dir, which must exist and be empty: config.json (the input's with a
 * quantization_config), shards of at most shard_bytes (0: 5 GB) with an index, and the
 * tokenizer files present in in_dir. Streams the input with n_threads threads (< 1: one
 * per core), writing each piece at its place with pwrite; memory stays at a few MB a
 * thread. progress (may be NULL) is called from the calling thread every 100 ms and at
 * the end; a non-zero return cancels (GLM_ERR_ARG "cancelled"). Opens nothing in in_dir
 * for writing. On failure out_dir may hold partial files: the caller removes it. */
int glm_convert_checkpoint(const char *in_dir, const char *out_dir, glm_weight_format fmt, int n_threads,
                           uint64_t shard_bytes, glm_progress_fn progress, void *user);

#endif
