/* test-tokenizer.c - the tokenizer against Hugging Face tokenizers, id for id: every
 * line of tests/data/tok/corpus.jsonl through the four real tokenizer.json files
 * (../shared/tokenizers, or the directory scripts/fetch-tokenizers.sh fills), the
 * GLM-style models/glm-tiny, and the variants of variants.json; expected ids from
 * scripts/tokenizer-refs.py. Also decoding, the streaming decoder, invalid UTF-8,
 * load errors, and the chat formats against transformers' rendering of the real
 * GLM-4.5 and GLM-4.7 templates. A missing reference file is a failure. */
#include "test.h"
#include "glm.h"
#include "json.h"
#include "tokenizer.h"

#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#define DATA "tests/data/tok/"

static const char *REAL[] = {"qwen3", "llama3_1", "deepseek_v3", "gpt4o"};

/* Reads a whole file; returns a malloc'd NUL-terminated buffer or NULL. */
static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) b[n] = 0;
    if (len) *len = (size_t)n;
    return b;
}

/* Returns the directory holding the real tokenizers, or NULL (with a message). */
static const char *tokenizers_dir(void) {
    static char buf[1024];
    const char *cands[] = {getenv("GLM_TOKENIZERS"), "../shared/tokenizers", ".data/tokenizers"};
    for (int i = 0; i < 3; i++) {
        if (!cands[i]) continue;
        snprintf(buf, sizeof buf, "%s/llama3_1/tokenizer.json", cands[i]);
        struct stat st;
        if (!stat(buf, &st)) return cands[i];
    }
    fprintf(stderr, "  no tokenizer.json files: looked in $GLM_TOKENIZERS, ../shared/tokenizers, .data/tokenizers;"
                    " run scripts/fetch-tokenizers.sh .data/tokenizers\n");
    return NULL;
}

/* The corpus: one JSON string a line. */
static char **corpus;
static size_t *corpus_len;
static int n_corpus;

/* Loads the corpus once; returns 0 or -1. */
static int load_corpus(void) {
    if (corpus) return 0;
    size_t len;
    char *text = slurp(DATA "corpus.jsonl", &len);
    if (!text) {
        fprintf(stderr, "  missing " DATA "corpus.jsonl\n");
        return -1;
    }
    int cap = 512;
    corpus = malloc(sizeof(char *) * (size_t)cap);
    corpus_len = malloc(sizeof(size_t) * (size_t)cap);
    char *line = text;
    while (*line) {
        char *nl = strchr(line, '\n');
        size_t ll = nl ? (size_t)(nl - line) : strlen(line);
        char err[128];
        json_doc *d = json_parse(line, ll, err, sizeof err);
        if (!d || json_root(d)->type != JSON_STRING) {
            fprintf(stderr, "  corpus line %d: %s\n", n_corpus + 1, d ? "not a string" : err);
            json_free(d);
            free(text);
            return -1;
        }
        const json_value *v = json_root(d);
        corpus[n_corpus] = malloc(v->u.str.len + 1);
        memcpy(corpus[n_corpus], v->u.str.s, v->u.str.len + 1);
        corpus_len[n_corpus++] = v->u.str.len;
        json_free(d);
        if (n_corpus == cap) {
            cap *= 2;
            corpus = realloc(corpus, sizeof(char *) * (size_t)cap);
            corpus_len = realloc(corpus_len, sizeof(size_t) * (size_t)cap);
        }
        if (!nl) break;
        line = nl + 1;
    }
    free(text);
    return 0;
}

/* Loads a real tokenizer, glm-tiny, or a variant built from variants.json. */
static glm_tokenizer *load_named(const char *name) {
    const char *dir = tokenizers_dir();
    char path[1024];
    glm_tokenizer *tok = NULL;
    if (!strcmp(name, "glm-tiny")) {
        if (glm_tokenizer_load_dir("models/glm-tiny", &tok)) fprintf(stderr, "  %s\n", glm_last_error());
        return tok;
    }
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, REAL[i])) continue;
        if (!dir) return NULL;
        snprintf(path, sizeof path, "%s/%s/tokenizer.json", dir, name);
        if (glm_tokenizer_load(path, &tok)) fprintf(stderr, "  %s\n", glm_last_error());
        return tok;
    }
    /* a variant: base tokenizer.json with pre_tokenizer replaced / added tokens appended */
    char err[256];
    size_t vlen;
    char *vtext = slurp(DATA "variants.json", &vlen);
    if (!vtext) {
        fprintf(stderr, "  missing " DATA "variants.json\n");
        return NULL;
    }
    json_doc *vd = json_parse(vtext, vlen, err, sizeof err);
    const json_value *var = vd ? json_get(json_root(vd), name) : NULL;
    const char *base = var ? json_get_str(var, "base") : NULL;
    if (!base || !dir) {
        fprintf(stderr, "  variant %s not found\n", name);
        json_free(vd);
        free(vtext);
        return NULL;
    }
    snprintf(path, sizeof path, "%s/%s/tokenizer.json", dir, base);
    size_t blen;
    char *btext = slurp(path, &blen);
    json_doc *bd = btext ? json_parse(btext, blen, err, sizeof err) : NULL;
    if (bd) {
        const json_value *root = json_root(bd);
        json_value nroot = *root;
        json_member *mem = malloc(sizeof(json_member) * root->u.obj.n);
        memcpy(mem, root->u.obj.members, sizeof(json_member) * root->u.obj.n);
        nroot.u.obj.members = mem;
        json_value *items = NULL;
        for (size_t i = 0; i < root->u.obj.n; i++) {
            if (!strcmp(mem[i].key, "pre_tokenizer") && json_get(var, "pre_tokenizer"))
                mem[i].value = *json_get(var, "pre_tokenizer");
            const json_value *extra = json_get(var, "added_tokens");
            if (!strcmp(mem[i].key, "added_tokens") && extra) {
                size_t n0 = mem[i].value.u.arr.n, n1 = extra->u.arr.n;
                items = malloc(sizeof(json_value) * (n0 + n1));
                memcpy(items, mem[i].value.u.arr.items, sizeof(json_value) * n0);
                memcpy(items + n0, extra->u.arr.items, sizeof(json_value) * n1);
                mem[i].value.u.arr.items = items;
                mem[i].value.u.arr.n = n0 + n1;
            }
        }
        if (glm_tokenizer_from_json(&nroot, name, &tok)) fprintf(stderr, "  %s\n", glm_last_error());
        free(items);
        free(mem);
    } else {
        fprintf(stderr, "  cannot read %s\n", path);
    }
    json_free(bd);
    free(btext);
    json_free(vd);
    free(vtext);
    return tok;
}

/* Expected data of one tokenizer, by corpus line. */
typedef struct {
    int32_t *ids[3];   /* P, N, A */
    int n[3];
    int has[3];
    char *dec;         /* D, or NULL: the line itself */
    size_t dec_len;
} expect;

/* Parses NAME.ids into ex[n_corpus]; returns 0 or -1. */
static int load_expect(const char *name, expect *ex) {
    char path[512];
    snprintf(path, sizeof path, DATA "%s.ids", name);
    size_t len;
    char *text = slurp(path, &len);
    if (!text) {
        fprintf(stderr, "  missing reference file %s (scripts/tokenizer-refs.py writes it)\n", path);
        return -1;
    }
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#') continue;
        char kind = line[0];
        char *p = line + 1;
        long idx = strtol(p, &p, 10);
        if (idx < 0 || idx >= n_corpus) {
            fprintf(stderr, "  %s: bad line index %ld\n", path, idx);
            free(text);
            return -1;
        }
        expect *e = &ex[idx];
        if (kind == 'D') {
            while (*p == ' ') p++;
            char err[128];
            json_doc *d = json_parse(p, strlen(p), err, sizeof err);
            if (!d) {
                fprintf(stderr, "  %s: %s\n", path, err);
                free(text);
                return -1;
            }
            e->dec = malloc(json_root(d)->u.str.len + 1);
            memcpy(e->dec, json_root(d)->u.str.s, json_root(d)->u.str.len + 1);
            e->dec_len = json_root(d)->u.str.len;
            json_free(d);
            continue;
        }
        int k = kind == 'P' ? 0 : kind == 'N' ? 1 : kind == 'A' ? 2 : -1;
        if (k < 0) continue;
        int cap = 16, n = 0;
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)cap);
        for (;;) {
            while (*p == ' ') p++;
            if (!*p) break;
            if (n == cap) ids = realloc(ids, sizeof(int32_t) * (size_t)(cap *= 2));
            ids[n++] = (int32_t)strtol(p, &p, 10);
        }
        e->ids[k] = ids;
        e->n[k] = n;
        e->has[k] = 1;
    }
    free(text);
    return 0;
}

/* Frees expected data. */
static void free_expect(expect *ex) {
    for (int i = 0; i < n_corpus; i++) {
        for (int k = 0; k < 3; k++) free(ex[i].ids[k]);
        free(ex[i].dec);
    }
    free(ex);
}

/* load_named for a test that needs the tokenizer: a failed load fails the test (NULL). */
static glm_tokenizer *need_tokenizer(const char *name) {
    glm_tokenizer *tok = load_named(name);
    CHECK_MSG(tok != NULL, "cannot load tokenizer %s", name);
    return tok;
}

/* Returns 1 when two id arrays are equal. */
static int same(const int32_t *a, int na, const int32_t *b, int nb) {
    return na == nb && (na == 0 || !memcmp(a, b, sizeof(int32_t) * (size_t)na));
}

/* Runs the whole corpus through one tokenizer; returns the number of mismatches. */
static int check_parity(const char *name) {
    if (load_corpus()) return 1;
    glm_tokenizer *tok = load_named(name);
    if (!tok) return 1;
    expect *ex = calloc((size_t)n_corpus, sizeof *ex);
    if (load_expect(name, ex)) {
        free(ex);
        glm_tokenizer_free(tok);
        return 1;
    }
    int bad = 0, lines = 0, shown = 0;
    long ids_total = 0;
    for (int i = 0; i < n_corpus; i++) {
        expect *e = &ex[i];
        if (!e->has[0]) {
            fprintf(stderr, "  %s: no expected ids for line %d\n", name, i);
            bad++;
            continue;
        }
        const int flags[3] = {GLM_TOK_PARSE_SPECIAL, 0, GLM_TOK_PARSE_SPECIAL | GLM_TOK_ADD_SPECIAL};
        for (int k = 0; k < 3; k++) {
            if (k == 2 && !e->has[2]) continue;
            const int32_t *want = e->has[k] ? e->ids[k] : e->ids[0];
            int n_want = e->has[k] ? e->n[k] : e->n[0];
            int32_t *got = NULL;
            int n_got = 0;
            int rc = glm_tokenize(tok, corpus[i], corpus_len[i], flags[k], &got, &n_got);
            if (rc || !same(got, n_got, want, n_want)) {
                bad++;
                if (shown++ < 5) {
                    fprintf(stderr, "  %s line %d mode %c: ", name, i, "PNA"[k]);
                    if (rc) fprintf(stderr, "error %s", glm_last_error());
                    for (int j = 0; !rc && j < n_got && j < 24; j++) fprintf(stderr, "%d ", got[j]);
                    fprintf(stderr, " != ");
                    for (int j = 0; j < n_want && j < 24; j++) fprintf(stderr, "%d ", want[j]);
                    fprintf(stderr, "\n");
                }
            } else if (k == 0) {
                lines++;
                ids_total += n_got;
            }
            free(got);
        }
        /* decoding: HF's decode of the expected ids, and the stream gives the same bytes */
        char *dec = NULL;
        size_t dl = 0;
        const char *want_dec = e->dec ? e->dec : corpus[i];
        size_t want_len = e->dec ? e->dec_len : corpus_len[i];
        if (glm_detokenize(tok, e->ids[0], e->n[0], 0, &dec, &dl) || dl != want_len || memcmp(dec, want_dec, dl)) {
            bad++;
            if (shown++ < 5) fprintf(stderr, "  %s line %d: decode differs\n", name, i);
        }
        glm_detok_stream *st = NULL;
        char *acc = malloc(dl + 64);
        size_t an = 0;
        int ok = !glm_detok_stream_new(tok, 0, &st);
        for (int j = 0; ok && j < e->n[0]; j++) {
            const char *t;
            size_t tl;
            ok = !glm_detok_stream_push(st, e->ids[0][j], &t, &tl) && an + tl <= dl;
            if (ok) memcpy(acc + an, t, tl), an += tl;
        }
        if (ok) {
            const char *t;
            size_t tl;
            ok = !glm_detok_stream_flush(st, &t, &tl) && an + tl <= dl;
            if (ok) memcpy(acc + an, t, tl), an += tl;
        }
        if (!ok || an != dl || (dl && memcmp(acc, dec, dl))) {
            bad++;
            if (shown++ < 5) fprintf(stderr, "  %s line %d: stream decode differs\n", name, i);
        }
        glm_detok_stream_free(st);
        free(acc);
        free(dec);
    }
    fprintf(stderr, "  %-20s %d/%d lines id-for-id (%ld ids), %d mismatches\n", name, lines, n_corpus, ids_total, bad);
    free_expect(ex);
    glm_tokenizer_free(tok);
    return bad;
}

TEST(parity_qwen3) { CHECK(check_parity("qwen3") == 0); }
TEST(parity_llama3_1) { CHECK(check_parity("llama3_1") == 0); }
TEST(parity_deepseek_v3) { CHECK(check_parity("deepseek_v3") == 0); }
TEST(parity_gpt4o) { CHECK(check_parity("gpt4o") == 0); }
TEST(parity_glm_tiny) { CHECK(check_parity("glm-tiny") == 0); }
TEST(parity_llama3_1_bytelevel) { CHECK(check_parity("llama3_1-bytelevel") == 0); }
TEST(parity_qwen3_added) { CHECK(check_parity("qwen3-added") == 0); }
TEST(parity_gpt4o_splits) { CHECK(check_parity("gpt4o-splits") == 0); }
TEST(parity_deepseek_v3_regex) { CHECK(check_parity("deepseek_v3-regex") == 0); }

/* Every corpus line (valid UTF-8) decodes back to itself with the GLM tokenizer. */
TEST(roundtrip) {
    CHECK(load_corpus() == 0);
    glm_tokenizer *tok = need_tokenizer("glm-tiny");
    if (!tok) return;
    for (int i = 0; i < n_corpus; i++) {
        for (int flags = 0; flags < 2; flags++) {
            int32_t *ids;
            int n;
            char *dec;
            size_t dl;
            CHECK(glm_tokenize(tok, corpus[i], corpus_len[i], flags, &ids, &n) == GLM_OK);
            CHECK(glm_detokenize(tok, ids, n, 0, &dec, &dl) == GLM_OK);
            CHECK_MSG(dl == corpus_len[i] && !memcmp(dec, corpus[i], dl), "line %d", i);
            free(ids);
            free(dec);
        }
    }
    glm_tokenizer_free(tok);
}

TEST(special_tokens) {
    glm_tokenizer *tok = need_tokenizer("glm-tiny");
    if (!tok) return;
    int32_t user = glm_tokenizer_find(tok, "<|user|>");
    CHECK(user >= 0 && glm_token_is_special(tok, user));
    CHECK(glm_tokenizer_find(tok, "<|endoftext|>") == glm_tokenizer_eos(tok));
    CHECK(glm_tokenizer_find(tok, "no such token here") == -1);
    CHECK(glm_tokenizer_chat_format(tok) == GLM_CHAT_GLM45);
    int32_t *ids;
    int n;
    CHECK(glm_tokenize(tok, "<|user|>", 8, GLM_TOK_PARSE_SPECIAL, &ids, &n) == GLM_OK);
    CHECK(n == 1 && ids[0] == user);
    free(ids);
    CHECK(glm_tokenize(tok, "<|user|>", 8, 0, &ids, &n) == GLM_OK);
    CHECK(n > 1);
    free(ids);
    /* --add-special: [gMASK]<sop> first */
    CHECK(glm_tokenize(tok, "hi", 2, GLM_TOK_PARSE_SPECIAL | GLM_TOK_ADD_SPECIAL, &ids, &n) == GLM_OK);
    CHECK(n >= 3 && ids[0] == glm_tokenizer_find(tok, "[gMASK]") && ids[1] == glm_tokenizer_find(tok, "<sop>"));
    free(ids);
    char *s;
    int32_t two[2] = {user, glm_tokenizer_find(tok, "hi")};
    if (two[1] >= 0) {
        CHECK(glm_detokenize(tok, two, 2, GLM_DETOK_SKIP_SPECIAL, &s, NULL) == GLM_OK);
        CHECK(!strcmp(s, "hi"));
        free(s);
    }
    CHECK(glm_tokenizer_n_vocab(tok) > user);
    size_t pl;
    CHECK(glm_token_piece(tok, -1, &pl) == NULL && glm_token_piece(tok, glm_tokenizer_n_vocab(tok), &pl) == NULL);
    glm_tokenizer_free(tok);
}

/* Invalid UTF-8 input is an error naming the byte offset, never a crash. */
TEST(invalid_utf8) {
    glm_tokenizer *tok = need_tokenizer("glm-tiny");
    if (!tok) return;
    const char *bad[] = {"abc\xff", "ab\xc3", "\xe2\x82", "x\xed\xa0\x80y", "\xc0\xaf", "ok\xf4\x90\x80\x80"};
    const size_t off[] = {3, 2, 0, 1, 0, 2};
    for (int i = 0; i < 6; i++) {
        int32_t *ids = NULL;
        int n = 0;
        int rc = glm_tokenize(tok, bad[i], strlen(bad[i]), GLM_TOK_PARSE_SPECIAL, &ids, &n);
        CHECK(rc == GLM_ERR_ARG && ids == NULL);
        char want[64];
        snprintf(want, sizeof want, "byte offset %zu", off[i]);
        CHECK_MSG(strstr(glm_last_error(), want) != NULL, "%s", glm_last_error());
    }
    int32_t *ids;
    int n;
    CHECK(glm_tokenize(tok, "", 0, GLM_TOK_PARSE_SPECIAL, &ids, &n) == GLM_OK && n == 0);
    free(ids);
    glm_tokenizer_free(tok);
}

/* The stream never emits half a character; invalid bytes become U+FFFD as in HF decode. */
TEST(stream_utf8) {
    glm_tokenizer *tok = need_tokenizer("llama3_1");
    if (!tok) return;
    int32_t *ids;
    int n;
    const char *text = "a😀b你";
    CHECK(glm_tokenize(tok, text, strlen(text), 0, &ids, &n) == GLM_OK);
    glm_detok_stream *st;
    CHECK(glm_detok_stream_new(tok, 0, &st) == GLM_OK);
    char out[64];
    size_t on = 0;
    for (int i = 0; i < n; i++) {
        const char *t;
        size_t tl;
        CHECK(glm_detok_stream_push(st, ids[i], &t, &tl) == GLM_OK);
        /* whatever comes out is whole characters */
        for (size_t j = 0; j < tl;) {
            int l = (unsigned char)t[j] < 0x80 ? 1 : (unsigned char)t[j] < 0xE0 ? 2 : (unsigned char)t[j] < 0xF0 ? 3 : 4;
            CHECK(j + (size_t)l <= tl);
            j += (size_t)l;
        }
        memcpy(out + on, t, tl);
        on += tl;
    }
    out[on] = 0;
    CHECK(!strcmp(out, text));
    free(ids);
    /* byte tokens: E2 82 then 'A' -> U+FFFD A; a dangling F0 at the end -> U+FFFD at flush */
    int32_t e2 = glm_tokenizer_find(tok, "â"), x82 = glm_tokenizer_find(tok, "Ĥ"), A = glm_tokenizer_find(tok, "A"),
            f0 = glm_tokenizer_find(tok, "ð");
    CHECK(e2 >= 0 && x82 >= 0 && A >= 0 && f0 >= 0);
    int32_t seq[4] = {e2, x82, A, f0};
    char acc[32];
    size_t an = 0;
    for (int i = 0; i < 4; i++) {
        const char *t;
        size_t tl;
        CHECK(glm_detok_stream_push(st, seq[i], &t, &tl) == GLM_OK);
        memcpy(acc + an, t, tl);
        an += tl;
    }
    const char *t;
    size_t tl;
    CHECK(glm_detok_stream_flush(st, &t, &tl) == GLM_OK);
    memcpy(acc + an, t, tl);
    an += tl;
    CHECK(an == 7 && !memcmp(acc, "\xEF\xBF\xBD" "A" "\xEF\xBF\xBD", 7));
    char *whole;
    size_t wl;
    CHECK(glm_detokenize(tok, seq, 4, 0, &whole, &wl) == GLM_OK);
    CHECK(wl == 7 && !memcmp(whole, acc, 7));
    free(whole);
    CHECK(glm_detok_stream_push(st, -5, &t, &tl) == GLM_ERR_ARG);
    glm_detok_stream_free(st);
    glm_tokenizer_free(tok);
}

/* Loads that must fail with a message naming the problem. */
TEST(load_errors) {
    glm_tokenizer *tok = NULL;
    CHECK(glm_tokenizer_load("tests/data/tok/no-such-file.json", &tok) == GLM_ERR_IO);
    CHECK(strstr(glm_last_error(), "no-such-file.json") != NULL);
    const char *wp = "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}";
    CHECK(glm_tokenizer_load_mem(wp, strlen(wp), "wp.json", &tok) == GLM_ERR_UNSUPPORTED);
    CHECK(strstr(glm_last_error(), "WordPiece") != NULL);
    const char *bad = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}";
    CHECK(glm_tokenizer_load_mem(bad, strlen(bad), "m.json", &tok) == GLM_ERR_FORMAT);
    CHECK(strstr(glm_last_error(), "merge 0") != NULL);
    const char *fmt =
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [[\"a\", \"b\"]]},"
        " \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": "
        "{\"Regex\": \"(a)\\\\1\"}, \"behavior\": \"Isolated\"}, {\"type\": \"ByteLevel\"}]}, \"decoder\": {\"type\": \"ByteLevel\"}}";
    CHECK(glm_tokenizer_load_mem(fmt, strlen(fmt), "r.json", &tok) == GLM_ERR_UNSUPPORTED);
    CHECK_MSG(strstr(glm_last_error(), "backreference") != NULL, "%s", glm_last_error());
    const char *ok =
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [[\"a\", \"b\"]]},"
        " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false}, \"decoder\": {\"type\": \"ByteLevel\"}}";
    CHECK(glm_tokenizer_load_mem(ok, strlen(ok), "ok.json", &tok) == GLM_OK);
    int32_t *ids;
    int n;
    /* byte 'c' has no token and no unk_token: dropped, as HF does */
    CHECK(glm_tokenize(tok, "abcab", 5, 0, &ids, &n) == GLM_OK);
    CHECK(n == 2 && ids[0] == 2 && ids[1] == 2);
    free(ids);
    glm_tokenizer_free(tok);
    const char *nodec = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                        " \"pre_tokenizer\": {\"type\": \"Metaspace\"}, \"decoder\": {\"type\": \"ByteLevel\"}}";
    CHECK(glm_tokenizer_load_mem(nodec, strlen(nodec), "ms.json", &tok) == GLM_ERR_UNSUPPORTED);
    CHECK(strstr(glm_last_error(), "Metaspace") != NULL);
}

/* A small tokenizer.json: model type and extra model members, then the normalizer,
 * pre_tokenizer, decoder and post_processor JSON (NULL for the defaults: none,
 * ByteLevel without a prefix space, ByteLevel, none). Returns a static buffer. */
static const char *mini_json(const char *mtype, const char *model_extra, const char *norm, const char *pre,
                             const char *dec, const char *post) {
    static char buf[8192];
    snprintf(buf, sizeof buf,
             "{\"model\": {\"type\": \"%s\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2, \"<s>\": 3, \"</s>\": 5},"
             " \"merges\": [[\"a\", \"b\"]]%s},"
             " \"normalizer\": %s, \"pre_tokenizer\": %s, \"decoder\": %s, \"post_processor\": %s}",
             mtype ? mtype : "BPE", model_extra ? model_extra : "", norm ? norm : "null",
             pre ? pre : "{\"type\": \"ByteLevel\", \"add_prefix_space\": false}",
             dec ? dec : "{\"type\": \"ByteLevel\"}", post ? post : "null");
    return buf;
}

/* Loads json; returns the status, and on success frees the tokenizer. */
static int try_load(const char *json) {
    glm_tokenizer *tok = NULL;
    int rc = glm_tokenizer_load_mem(json, strlen(json), "t.json", &tok);
    glm_tokenizer_free(tok);
    return rc;
}

#define SPLIT(pat) "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"" pat "\"}, \"behavior\": \"Isolated\"}"
#define BL "{\"type\": \"ByteLevel\", \"add_prefix_space\": false}"
#define SEQ_PRE(a, b) "{\"type\": \"Sequence\", \"pretokenizers\": [" a ", " b "]}"
#define TPL(single, specials) "{\"type\": \"TemplateProcessing\", \"single\": [" single "], \"special_tokens\": {" specials "}}"
#define TPL_S(id) "{\"SpecialToken\": {\"id\": \"" id "\"}}"
#define TPL_A "{\"Sequence\": {\"id\": \"A\"}}"

/* Every construct the loader does not support is refused with a message naming it
 * (and the file); a tokenizer that is only slightly different still loads. */
TEST(unsupported_features) {
    static const struct {
        const char *mtype, *model_extra, *norm, *pre, *dec, *post, *word;
    } C[] = {
        {"Unigram", NULL, NULL, NULL, NULL, NULL, "model type Unigram"},
        {"WordPiece", NULL, NULL, NULL, NULL, NULL, "model type WordPiece"},
        {NULL, ", \"byte_fallback\": true", NULL, NULL, NULL, NULL, "byte_fallback"},
        {NULL, ", \"dropout\": 0.1", NULL, NULL, NULL, NULL, "dropout"},
        {NULL, ", \"continuing_subword_prefix\": \"##\"", NULL, NULL, NULL, NULL, "continuing_subword_prefix"},
        {NULL, ", \"end_of_word_suffix\": \"</w>\"", NULL, NULL, NULL, NULL, "end_of_word_suffix"},
        {NULL, NULL, "{\"type\": \"Lowercase\"}", NULL, NULL, NULL, "normalizer type Lowercase"},
        {NULL, NULL, "{\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"NFC\"}, {\"type\": \"Replace\"}]}", NULL, NULL, NULL,
         "normalizer type Replace"},
        {NULL, NULL, "{\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"NFC\"}, {\"type\": \"NFC\"}, {\"type\": \"NFC\"},"
         " {\"type\": \"NFC\"}, {\"type\": \"NFC\"}, {\"type\": \"NFC\"}, {\"type\": \"NFC\"}, {\"type\": \"NFC\"}, {\"type\": \"NFC\"},"
         " {\"type\": \"NFC\"}, {\"type\": \"NFC\"}, {\"type\": \"NFC\"}, {\"type\": \"NFC\"}, {\"type\": \"NFC\"}, {\"type\": \"NFC\"},"
         " {\"type\": \"NFC\"}, {\"type\": \"NFC\"}]}", NULL, NULL, NULL, "too many normalizers"},
        {NULL, NULL, NULL, "{\"type\": \"Whitespace\"}", NULL, NULL, "pre_tokenizer type Whitespace"},
        {NULL, NULL, NULL, "{\"type\": \"Metaspace\"}", NULL, NULL, "pre_tokenizer type Metaspace"},
        {NULL, NULL, NULL, SEQ_PRE(BL, SPLIT("a")), NULL, NULL, "Split after ByteLevel"},
        {NULL, NULL, NULL, SEQ_PRE(SPLIT("a"), "{\"type\": \"Digits\"}"), NULL, NULL, "pre_tokenizer type Digits"},
        {NULL, NULL, NULL, SPLIT("a"), NULL, NULL, "does not end in ByteLevel"},
        {NULL, NULL, NULL, "null", NULL, NULL, "does not end in ByteLevel"},
        {NULL, NULL, NULL, SEQ_PRE("{\"type\": \"Split\", \"pattern\": {\"Regex\": \"a\"}, \"behavior\": \"Splintered\"}", BL), NULL,
         NULL, "Split behavior Splintered"},
        {NULL, NULL, NULL, SEQ_PRE(SPLIT("(?<=a)b"), BL), NULL, NULL, "lookbehind"},
        {NULL, NULL, NULL, SEQ_PRE(SPLIT("\\\\p{Greek}"), BL), NULL, NULL, "Greek"},
        {NULL, NULL, NULL, SEQ_PRE(SPLIT("[[:alpha:]]"), BL), NULL, NULL, "POSIX bracket"},
        {NULL, NULL, NULL, NULL, "null", NULL, "decoder is null"},
        {NULL, NULL, NULL, NULL, "{\"type\": \"WordPiece\"}", NULL, "decoder type WordPiece"},
        {NULL, NULL, NULL, NULL, "{\"type\": \"Sequence\", \"decoders\": [{\"type\": \"ByteLevel\"}, {\"type\": \"Strip\"}]}", NULL,
         "decoder type Strip"},
        {NULL, NULL, NULL, NULL, NULL, "{\"type\": \"Wordy\"}", "post_processor type Wordy"},
        {NULL, NULL, NULL, NULL, NULL,
         "{\"type\": \"Sequence\", \"processors\": [{\"type\": \"RobertaProcessing\", \"cls\": [\"<s>\", 3], \"sep\": [\"</s>\", 5]},"
         " {\"type\": \"BertProcessing\", \"cls\": [\"<s>\", 3], \"sep\": [\"</s>\", 5]}]}",
         "more than one post-processor"},
        {NULL, NULL, NULL, NULL, NULL, TPL(TPL_S("<s>") ", " TPL_A ", " TPL_A, "\"<s>\": {\"ids\": [3]}"), "sequence A once"},
        {NULL, NULL, NULL, NULL, NULL, TPL(TPL_S("<s>") ", {\"Sequence\": {\"id\": \"B\"}}", "\"<s>\": {\"ids\": [3]}"),
         "sequence A once"},
        {NULL, NULL, NULL, NULL, NULL, TPL(TPL_S("<s>"), "\"<s>\": {\"ids\": [3]}"), "without sequence A"},
    };
    for (size_t i = 0; i < sizeof C / sizeof C[0]; i++) {
        int rc = try_load(mini_json(C[i].mtype, C[i].model_extra, C[i].norm, C[i].pre, C[i].dec, C[i].post));
        const char *e = glm_last_error();
        CHECK_MSG(rc == GLM_ERR_UNSUPPORTED && strstr(e, C[i].word) && strstr(e, "t.json"),
                  "case %zu: rc %d, \"%s\" should name %s", i, rc, e, C[i].word);
    }
    /* the supported neighbours of those load */
    const char *ok[][6] = {
        {NULL, ", \"byte_fallback\": false, \"dropout\": null", NULL, NULL, NULL, NULL},
        {NULL, ", \"continuing_subword_prefix\": \"\", \"fuse_unk\": true", "{\"type\": \"NFKC\"}", NULL, NULL, NULL},
        {NULL, NULL, NULL, SEQ_PRE(SPLIT("\\\\p{L}+|\\\\s+(?!\\\\S)"), BL), "{\"type\": \"Sequence\", \"decoders\": [{\"type\": \"ByteLevel\"}]}",
         TPL(TPL_S("<s>") ", " TPL_A ", " TPL_S("</s>"), "\"<s>\": {\"ids\": [3]}, \"</s>\": {\"ids\": [5]}")},
        {NULL, NULL, NULL, NULL, NULL, "{\"type\": \"RobertaProcessing\", \"cls\": [\"<s>\", 3], \"sep\": [\"</s>\", 5]}"},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        int rc = try_load(mini_json(ok[i][0], ok[i][1], ok[i][2], ok[i][3], ok[i][4], ok[i][5]));
        CHECK_MSG(rc == GLM_OK, "supported case %zu: %s", i, glm_last_error());
    }
}

/* Post-processor ids must be integers naming tokens of the vocabulary: an id in range
 * but missing crashed glm-tokenize --json --add-special, and RobertaProcessing ids
 * given as strings or booleans silently became id 0. */
TEST(post_processor_ids) {
    static const struct {
        const char *post, *word;
    } C[] = {
        {TPL(TPL_S("<s>") ", " TPL_A, "\"<s>\": {\"ids\": [4]}"), "id 4 is not in the vocabulary"},
        {TPL(TPL_S("<s>") ", " TPL_A, "\"<s>\": {\"ids\": [6]}"), "id 6 is not in the vocabulary"},
        {TPL(TPL_S("<s>") ", " TPL_A, "\"<s>\": {\"ids\": [1.5]}"), "ids[0] is not a token id"},
        {TPL(TPL_S("<s>") ", " TPL_A, "\"<s>\": {\"ids\": [3, 1e20]}"), "ids[1] is not a token id"},
        {TPL(TPL_S("<s>") ", " TPL_A, "\"<s>\": {\"ids\": [\"3\"]}"), "ids[0] is not a token id"},
        {TPL(TPL_S("<x>") ", " TPL_A, "\"<s>\": {\"ids\": [3]}"), "special token <x> has no ids"},
        {"{\"type\": \"RobertaProcessing\", \"cls\": [\"<s>\", \"3\"], \"sep\": [\"</s>\", 5]}", "cls must be [token, id]"},
        {"{\"type\": \"RobertaProcessing\", \"cls\": [\"<s>\", 3], \"sep\": [\"</s>\", true]}", "sep must be [token, id]"},
        {"{\"type\": \"BertProcessing\", \"cls\": [\"<s>\", -1], \"sep\": [\"</s>\", 5]}", "cls must be [token, id]"},
        {"{\"type\": \"BertProcessing\", \"cls\": [3, \"<s>\"], \"sep\": [\"</s>\", 5]}", "cls must be [token, id]"},
        {"{\"type\": \"RobertaProcessing\", \"cls\": [\"<s>\", 4], \"sep\": [\"</s>\", 5]}", "id 4 is not in the vocabulary"},
    };
    for (size_t i = 0; i < sizeof C / sizeof C[0]; i++) {
        int rc = try_load(mini_json(NULL, NULL, NULL, NULL, NULL, C[i].post));
        const char *e = glm_last_error();
        CHECK_MSG(rc == GLM_ERR_FORMAT && strstr(e, C[i].word), "case %zu: rc %d, \"%s\" should say %s", i, rc, e, C[i].word);
    }
    /* the vocabulary's ids are checked the same way */
    const char *bad_vocab = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1.5}, \"merges\": []},"
                            " \"pre_tokenizer\": " BL ", \"decoder\": {\"type\": \"ByteLevel\"}}";
    CHECK(try_load(bad_vocab) == GLM_ERR_FORMAT && strstr(glm_last_error(), "vocab entry 1 has a bad id"));
    /* a valid template: its ids come first and last with --add-special */
    glm_tokenizer *tok = NULL;
    const char *j = mini_json(NULL, NULL, NULL, NULL, NULL,
                              "{\"type\": \"RobertaProcessing\", \"cls\": [\"<s>\", 3], \"sep\": [\"</s>\", 5]}");
    CHECK(glm_tokenizer_load_mem(j, strlen(j), "t.json", &tok) == GLM_OK);
    int32_t *ids = NULL;
    int n = 0;
    CHECK(tok && glm_tokenize(tok, "ab", 2, GLM_TOK_ADD_SPECIAL, &ids, &n) == GLM_OK);
    CHECK(n == 3 && ids[0] == 3 && ids[1] == 2 && ids[2] == 5);
    free(ids);
    glm_tokenizer_free(tok);
}

/* Vocabulary keys and unk_token of any length: an unk_token longer than every key
 * overflowed a heap buffer; an empty key was undefined behaviour. */
TEST(odd_vocab_keys) {
    size_t n = 5000;
    char *j = malloc(n + 512);
    int k = snprintf(j, n + 512, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [], \"unk_token\": \"");
    memset(j + k, 'x', n);
    snprintf(j + k + n, 512, "\"}, \"pre_tokenizer\": " BL ", \"decoder\": {\"type\": \"ByteLevel\"}}");
    glm_tokenizer *tok = NULL;
    CHECK_MSG(glm_tokenizer_load_mem(j, strlen(j), "unk.json", &tok) == GLM_OK, "%s", glm_last_error());
    int32_t *ids = NULL;
    int cnt = 0;
    /* the unk_token is not in the vocabulary: unknown bytes are dropped, as HF does */
    CHECK(tok && glm_tokenize(tok, "acb", 3, 0, &ids, &cnt) == GLM_OK && cnt == 2 && ids[0] == 0 && ids[1] == 1);
    free(ids);
    glm_tokenizer_free(tok);
    free(j);
    const char *e = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"\": 0, \"a\": 1}, \"merges\": [], \"unk_token\": \"\"},"
                    " \"pre_tokenizer\": " BL ", \"decoder\": {\"type\": \"ByteLevel\"}}";
    tok = NULL;
    CHECK_MSG(glm_tokenizer_load_mem(e, strlen(e), "empty.json", &tok) == GLM_OK, "%s", glm_last_error());
    if (!tok) return;
    CHECK(glm_tokenizer_find(tok, "") == 0 && glm_tokenizer_find(tok, "a") == 1);
    int32_t zero = 0;
    char *out = NULL;
    size_t ol = 1;
    CHECK(glm_detokenize(tok, &zero, 1, 0, &out, &ol) == GLM_OK && ol == 0);
    free(out);
    glm_tokenizer_free(tok);
}

/* Costly split patterns: too deep is a load error naming the nesting; too much work
 * on a text is an encode error naming the limit, returned at once (a possessive
 * pattern over 100 KB took 12 s). */
TEST(costly_split_regex) {
    static char pat[2048];
    char *q = pat;
    for (int i = 0; i < 300; i++) q += sprintf(q, "(?:");
    q += sprintf(q, "a");
    for (int i = 0; i < 300; i++) q += sprintf(q, ")");
    char pre[4096];
    snprintf(pre, sizeof pre, SEQ_PRE("{\"type\": \"Split\", \"pattern\": {\"Regex\": \"%s\"}, \"behavior\": \"Isolated\"}", BL), pat);
    CHECK(try_load(mini_json(NULL, NULL, NULL, pre, NULL, NULL)) == GLM_ERR_UNSUPPORTED);
    CHECK_MSG(strstr(glm_last_error(), "nesting deeper than 256 at offset"), "%s", glm_last_error());
    const char *j = mini_json(NULL, NULL, NULL, SEQ_PRE(SPLIT("a*+b|(?>a*)b"), BL), NULL, NULL);
    glm_tokenizer *tok = NULL;
    CHECK(glm_tokenizer_load_mem(j, strlen(j), "t.json", &tok) == GLM_OK);
    if (!tok) return;
    size_t n = 100000;
    char *text = malloc(n);
    memset(text, 'a', n);
    int32_t *ids = NULL;
    int cnt = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = glm_tokenize(tok, text, n, 0, &ids, &cnt);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double dt = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    CHECK_MSG(rc == GLM_ERR_UNSUPPORTED && strstr(glm_last_error(), "limits"), "rc %d: %s", rc, glm_last_error());
    CHECK_MSG(dt < 2.0, "took %.1f s", dt);
    free(ids);
    /* short texts still encode */
    CHECK(glm_tokenize(tok, "aab", 3, 0, &ids, &cnt) == GLM_OK && cnt == 2 && ids[0] == 0 && ids[1] == 2);
    free(ids);
    free(text);
    glm_tokenizer_free(tok);
}

/* Runs a shell command with stdout and stderr to files; returns its exit status. */
static int sh(const char *cmd, char **err) {
    char full[2048], path[64];
    snprintf(path, sizeof path, "/tmp/test-tokenizer-%d.err", (int)getpid());
    snprintf(full, sizeof full, "%s >/dev/null 2>%s </dev/null", cmd, path);
    int st = system(full);
    *err = slurp(path, NULL);
    if (!*err) *err = calloc(1, 1);
    remove(path);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* glm-tokenize's exit codes: 2 for usage errors (an unknown flag answered in one line,
 * ids that do not parse or are not in the vocabulary), 1 for run-time failures. */
TEST(tool_exit_codes) {
    const char *bin = getenv("GLM_BIN") ? getenv("GLM_BIN") : "build/bin";
    char cmd[1024], *err;
    snprintf(cmd, sizeof cmd, "%s/glm-tokenize -m models/glm-tiny --frobnicate", bin);
    CHECK(sh(cmd, &err) == 2);
    CHECK_MSG(strstr(err, "unknown argument '--frobnicate'") && !strstr(err, "usage") && strchr(err, '\n') == err + strlen(err) - 1,
              "\"%s\"", err);
    free(err);
    snprintf(cmd, sizeof cmd, "%s/glm-tokenize -m models/glm-tiny --decode -p '[744, 300, 78, 864]'", bin);
    CHECK(sh(cmd, &err) == 0);
    free(err);
    snprintf(cmd, sizeof cmd, "%s/glm-tokenize -m models/glm-tiny --decode -p '[9906, 1917]'", bin);
    CHECK(sh(cmd, &err) == 2);
    CHECK_MSG(strstr(err, "id 9906 at position 0 is not in the vocabulary"), "\"%s\"", err);
    free(err);
    snprintf(cmd, sizeof cmd, "%s/glm-tokenize -m models/glm-tiny --decode -p '[1, x]'", bin);
    CHECK(sh(cmd, &err) == 2 && strstr(err, "not a token id at byte 4"));
    free(err);
    snprintf(cmd, sizeof cmd, "%s/glm-tokenize -m models/glm-tiny -p \"$(printf 'ab\\377')\"", bin);
    CHECK(sh(cmd, &err) == 1 && strstr(err, "byte offset 2"));
    free(err);
    snprintf(cmd, sizeof cmd, "%s/glm-tokenize --tokenizer tests/data/tok/no-such-file.json -p hi", bin);
    CHECK(sh(cmd, &err) == 1 && strstr(err, "no-such-file.json"));
    free(err);
}

/* Chat rendering against transformers' apply_chat_template of the real templates. */
TEST(chat_templates) {
    size_t len;
    char *text = slurp(DATA "chat.json", &len);
    CHECK_MSG(text != NULL, "missing " DATA "chat.json");
    if (!text) return;
    char err[128];
    json_doc *d = json_parse(text, len, err, sizeof err);
    CHECK(d != NULL);
    const json_value *cases = d ? json_get(json_root(d), "cases") : NULL;
    CHECK(cases && cases->type == JSON_ARRAY && cases->u.arr.n >= 40);
    int n_ok = 0;
    for (size_t i = 0; cases && i < cases->u.arr.n; i++) {
        const json_value *c = &cases->u.arr.items[i];
        const json_value *msgs = json_get(c, "messages");
        glm_chat_msg m[16];
        size_t nm = msgs->u.arr.n;
        for (size_t j = 0; j < nm && j < 16; j++) {
            const json_value *mj = &msgs->u.arr.items[j];
            m[j].role = json_get_str(mj, "role");
            m[j].content = json_get_str(mj, "content");
            m[j].reasoning = json_get_str(mj, "reasoning_content");
        }
        int gen = 0, think = 0;
        json_get_bool(c, "add_generation_prompt", &gen);
        json_get_bool(c, "enable_thinking", &think);
        const char *tpl = json_get_str(c, "template");
        glm_chat_format f = !strcmp(tpl, "glm45") ? GLM_CHAT_GLM45 : GLM_CHAT_GLM47;
        char *out = NULL;
        CHECK(glm_chat_render(f, m, (int)nm, gen, think, &out, NULL) == GLM_OK);
        const char *want = json_get_str(c, "text");
        if (out && !strcmp(out, want)) n_ok++;
        else fprintf(stderr, "  %s case %zu:\n    got  %s\n    want %s\n", tpl, i, out ? out : "(null)", want);
        free(out);
    }
    CHECK(cases && n_ok == (int)cases->u.arr.n);
    fprintf(stderr, "  chat: %d/%zu cases equal to transformers' rendering\n", n_ok, cases ? cases->u.arr.n : 0);
    json_free(d);
    free(text);
    /* format detection from the template text */
    char *t45 = slurp(DATA "glm45.jinja", NULL), *t47 = slurp(DATA "glm47.jinja", NULL);
    CHECK(t45 && t47);
    CHECK(glm_chat_detect_format(t45) == GLM_CHAT_GLM45);
    CHECK(glm_chat_detect_format(t47) == GLM_CHAT_GLM47);
    CHECK(glm_chat_detect_format(NULL) == GLM_CHAT_GLM47);
    free(t45);
    free(t47);
    glm_chat_msg bad = {"wizard", "x", NULL};
    char *out = NULL;
    CHECK(glm_chat_render(GLM_CHAT_GLM47, &bad, 1, 1, 1, &out, NULL) == GLM_ERR_ARG && out == NULL);
}

RUN_TESTS()
