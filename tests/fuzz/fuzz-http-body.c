/* fuzz-http-body.c - glm-server's request-body reader (tools/server-body.h): any bytes
 * as a body of the completions and the chat endpoint parse or fail with a message, a
 * parsed chat body renders through the chat template; and the same bytes, cut in two at
 * a point the first byte picks, as an answer split into reasoning and content, whose
 * parts add up to the bytes less the tags. */
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
    for (int open = 0; open < 2; open++) {
        think_split t = {open, {0}, 0};
        sbuf reason = {0}, content = {0};
        const size_t cut = size ? data[0] % (size + 1) : 0;
        think_feed(&t, (const char *)data, cut, 0, &reason, &content);
        think_feed(&t, (const char *)data + cut, size - cut, 1, &reason, &content);
        if (reason.n + content.n > size || t.n_hold) __builtin_trap();
        sb_free(&reason);
        sb_free(&content);
    }
    return 0;
}
