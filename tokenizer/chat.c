/* chat.c - the GLM chat formats, rendered in C exactly as the models' Jinja chat
 * templates render string contents (transformers applies them with trim_blocks and
 * lstrip_blocks). GLM-4.5 and GLM-4.6 share one template; GLM-4.7 drops the newline
 * after role tags and opens the reply with <think> (or closes it with </think> when
 * thinking is off). Tools and multi-part contents are not rendered here. */
#include "tokenizer.h"
#include "internal.h"
#include "unicode.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    char *s;
    size_t n, cap;
    int oom;
} sbuf;

/* Appends p[0..n) to b (records running out of memory in b->oom). */
static void sb_add(sbuf *b, const char *p, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + n + 1) nc *= 2;
        char *ns = realloc(b->s, nc);
        if (!ns) {
            b->oom = 1;
            return;
        }
        b->s = ns;
        b->cap = nc;
    }
    memcpy(b->s + b->n, p, n);
    b->n += n;
    b->s[b->n] = 0;
}

/* Appends a NUL-terminated string. */
static void sb_str(sbuf *b, const char *p) {
    sb_add(b, p, strlen(p));
}

/* Returns non-zero when cp is whitespace for Python's str.isspace(). */
int glm_chat_is_space(uint32_t cp) {
    return glm_is_white_space(cp) || (cp >= 0x1C && cp <= 0x1F);
}

/* A view of a string: [p, p+n). */
typedef struct {
    const char *p;
    size_t n;
} view;

/* Returns v without leading (left) and/or trailing (right) Python whitespace. */
static view strip(view v, int left, int right) {
    const uint8_t *s = (const uint8_t *)v.p;
    size_t a = 0, b = v.n;
    while (left && a < b) {
        uint32_t cp;
        int l = glm_utf8_next(s, b, a, NULL) > 0 ? glm_utf8_decode(s, a, &cp) : 1;
        if (l == 1) cp = s[a];
        if (!glm_chat_is_space(cp)) break;
        a += (size_t)l;
    }
    while (right && b > a) {
        size_t q = b - 1;
        while (q > a && (s[q] & 0xC0) == 0x80) q--;
        uint32_t cp = s[q];
        if (glm_utf8_next(s, b, q, NULL) > 0) glm_utf8_decode(s, q, &cp);
        if (!glm_chat_is_space(cp)) break;
        b = q;
    }
    return (view){v.p + a, b - a};
}

/* Returns v without leading / trailing '\n' characters. */
static view strip_nl(view v, int left, int right) {
    while (left && v.n && v.p[0] == '\n') { v.p++; v.n--; }
    while (right && v.n && v.p[v.n - 1] == '\n') v.n--;
    return v;
}

/* Returns the position of needle in v at or after from (first when last = 0, last
 * occurrence when last = 1), or -1. */
static long find(view v, const char *needle, int last) {
    size_t nl = strlen(needle);
    long hit = -1;
    for (size_t i = 0; i + nl <= v.n; i++) {
        if (!memcmp(v.p + i, needle, nl)) {
            hit = (long)i;
            if (!last) return hit;
        }
    }
    return hit;
}

/* Splits assistant content as the templates do: reasoning = the text before the first
 * "</think>", minus trailing newlines, after its last "<think>", minus leading newlines;
 * content = the text after the last "</think>", minus leading newlines. */
static void split_reasoning(view content, view *reasoning, view *rest) {
    long e = find(content, "</think>", 0);
    if (e < 0) {
        *reasoning = (view){"", 0};
        *rest = content;
        return;
    }
    view before = strip_nl((view){content.p, (size_t)e}, 0, 1);
    long t = find(before, "<think>", 1);
    if (t >= 0) before = (view){before.p + t + 7, before.n - (size_t)t - 7};
    *reasoning = strip_nl(before, 1, 0);
    long le = find(content, "</think>", 1);
    *rest = strip_nl((view){content.p + le + 8, content.n - (size_t)le - 8}, 1, 0);
}

/* Returns GLM-4.5 when the first "<|user|>" of the template is followed by a newline,
 * written out or as the escape \n inside a template string literal. */
glm_chat_format glm_chat_detect_format(const char *template_text) {
    if (!template_text) return GLM_CHAT_GLM47;
    const char *u = strstr(template_text, "<|user|>");
    if (u && (u[8] == '\n' || (u[8] == '\\' && u[9] == 'n'))) return GLM_CHAT_GLM45;
    return GLM_CHAT_GLM47;
}

/* Returns GLM_OK with the rendered prompt in *out. */
int glm_chat_render(glm_chat_format format, const glm_chat_msg *msgs, int n_msgs, int add_generation_prompt,
                    int thinking, char **out, size_t *len) {
    if (!out || (n_msgs && !msgs) || n_msgs < 0) return glm_err(GLM_ERR_ARG, "glm_chat_render: NULL argument");
    if (format != GLM_CHAT_GLM45 && format != GLM_CHAT_GLM47)
        return glm_err(GLM_ERR_ARG, "glm_chat_render: unknown chat format %d", (int)format);
    *out = NULL;
    int g45 = format == GLM_CHAT_GLM45;
    int last_user = -1;
    for (int i = 0; i < n_msgs; i++) {
        if (!msgs[i].role || !msgs[i].content)
            return glm_err(GLM_ERR_ARG, "chat message %d has no role or content", i);
        if (!strcmp(msgs[i].role, "user")) last_user = i;
    }
    sbuf b = {0};
    sb_str(&b, "[gMASK]<sop>");
    for (int i = 0; i < n_msgs; i++) {
        const char *role = msgs[i].role;
        view c = {msgs[i].content, strlen(msgs[i].content)};
        if (!strcmp(role, "user")) {
            sb_str(&b, g45 ? "<|user|>\n" : "<|user|>");
            sb_add(&b, c.p, c.n);
            if (g45 && !thinking && !(c.n >= 8 && !memcmp(c.p + c.n - 8, "/nothink", 8))) sb_str(&b, "/nothink");
        } else if (!strcmp(role, "system")) {
            sb_str(&b, g45 ? "<|system|>\n" : "<|system|>");
            sb_add(&b, c.p, c.n);
        } else if (!strcmp(role, "assistant")) {
            view reasoning, rest;
            if (msgs[i].reasoning) {
                reasoning = (view){msgs[i].reasoning, strlen(msgs[i].reasoning)};
                rest = c;
            } else {
                split_reasoning(c, &reasoning, &rest);
            }
            sb_str(&b, "<|assistant|>");
            view r = strip(reasoning, 1, 1);
            /* the templates test the unstripped reasoning for emptiness */
            if (i > last_user && reasoning.n) {
                sb_str(&b, g45 ? "\n<think>" : "<think>");
                sb_add(&b, r.p, r.n);
                sb_str(&b, "</think>");
            } else {
                sb_str(&b, g45 ? "\n<think></think>" : "</think>");
            }
            view t = strip(rest, 1, 1);
            if (t.n) {
                if (g45) sb_str(&b, "\n");
                sb_add(&b, t.p, t.n);
            }
        } else if (!strcmp(role, "tool")) {
            if (i == 0 || strcmp(msgs[i - 1].role, "tool")) sb_str(&b, "<|observation|>");
            sb_str(&b, g45 ? "\n<tool_response>\n" : "<tool_response>");
            sb_add(&b, c.p, c.n);
            sb_str(&b, g45 ? "\n</tool_response>" : "</tool_response>");
        } else {
            free(b.s);
            return glm_err(GLM_ERR_ARG, "chat message %d: unknown role '%s' (system, user, assistant, tool)", i, role);
        }
    }
    if (add_generation_prompt) {
        sb_str(&b, "<|assistant|>");
        if (g45) {
            if (!thinking) sb_str(&b, "\n<think></think>");
        } else {
            sb_str(&b, thinking ? "<think>" : "</think>");
        }
    }
    if (b.oom || !b.s) {
        free(b.s);
        return glm_err(GLM_ERR_OOM, "out of memory");
    }
    *out = b.s;
    if (len) *len = b.n;
    return GLM_OK;
}
