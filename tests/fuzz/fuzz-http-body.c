/* fuzz-http-body.c - glm-server's request-body reader (tools/server-body.h): any bytes
 * as a body of the completions and the chat endpoint parse or fail with a message, and
 * a parsed chat body renders through the chat template. */
#include "../../tools/server-body.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    for (int chat = 0; chat < 2; chat++) {
        body_req b;
        char err[256];
        const char *param;
        if (body_parse((const char *)data, size, chat, &b, err, sizeof err, &param) == 0 && chat) {
            char *out = NULL;
            if (glm_chat_render(GLM_CHAT_GLM47, b.msgs, b.n_msgs, 1, b.thinking != 0, &out, NULL) == GLM_OK) free(out);
        }
        body_free(&b);
    }
    return 0;
}
