/* scheduler.h (not sched.h: that name is the system header pthread.h includes) - what the scheduler (lib/sched.c) needs from the context beyond glm.h:
 * reference-counted KV pages, so that one physical page can sit in several sequences'
 * page tables and in the prefix cache. Only full pages are shared (a sequence never
 * writes into a page it shares). Internal to libglm.
 *
 * With glm_sched_params.n_draft the scheduler also drafts (speculative decoding): it keeps
 * the MTP layer's cache of every request level with its main cache (glm_ctx_mtp_forward
 * after each step, on the main model's hidden states from glm_ctx_decode_hidden,
 * lib/backend.h), drafts with glm_spec_draft, verifies the whole batch's drafts in the
 * step's one forward with glm_spec_verify (lib/internal.h: glm_spec's rules, each request
 * with its own sampler parameters and generator) and cuts rejected drafts off with
 * glm_ctx_seq_truncate, which cuts the MTP layer's length too. The MTP layer's KV lives in
 * the same pages: a page the prefix cache shares carries the MTP rows its first holder
 * wrote, which a later request may use when the token after the page is its own too
 * (the last row of a page was made with it); glm_ctx_seq_share says so with mtp. */
#ifndef GLM_SCHEDULER_H
#define GLM_SCHEDULER_H

#include "glm.h"

/* Adds a holder to a page in use. */
void glm_ctx_page_retain(glm_ctx *ctx, int32_t page);
/* Drops a holder; the page goes back to the free list when none is left. */
void glm_ctx_page_release(glm_ctx *ctx, int32_t page);
/* Holders of a page (0 = free). */
int glm_ctx_page_refs(const glm_ctx *ctx, int32_t page);
/* The page id of page i of a sequence, -1 when it has none. */
int32_t glm_ctx_seq_page(const glm_ctx *ctx, int seq, int i);
/* Starts an empty sequence on n shared full pages (each retained): it then holds
 * n * GLM_PAGE tokens, and with mtp (a context made with params.mtp) the MTP layer's
 * rows of those positions too (glm_ctx_mtp_len n * GLM_PAGE). GLM_ERR_ARG when the
 * sequence is not empty, a page is free, or mtp without the MTP layer. */
int glm_ctx_seq_share(glm_ctx *ctx, int seq, const int32_t *pages, int n, int mtp);
/* The context's parameters as created. */
const glm_ctx_params *glm_ctx_params_of(const glm_ctx *ctx);
/* The model a context runs. */
const glm_model *glm_ctx_model(const glm_ctx *ctx);

#endif
