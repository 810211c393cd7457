/* tokenizer.h - internal entry points of the tokenizer shared with its tests and the
 * chat renderer. The public API lives in lib/glm.h. */
#ifndef GLM_TOK_TOKENIZER_H
#define GLM_TOK_TOKENIZER_H

#include "glm.h"
#include "json.h"

/* Builds a tokenizer from an already parsed tokenizer.json root; name labels errors.
 * The tree is only read during the call. */
int glm_tokenizer_from_json(const json_value *root, const char *name, glm_tokenizer **out);

/* Python's str.isspace() for one code point (what the chat templates' strip() uses). */
int glm_chat_is_space(uint32_t cp);

#endif
