/* glm-run - generate text with a GLM-4 MoE model: a prompt from -p, -f, stdin or
 * --prompt-ids, text streamed to stdout as it is decoded, diagnostics and timings on
 * stderr; --chat for an interactive conversation with the model's chat template.
 * Ctrl-C stops at the next step (exit status 130); a second Ctrl-C exits at once. */
#include "common.h"
#include "json.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static void usage(FILE *f) {
    fprintf(f,
        "usage: glm-run [-m DIR] [-p TEXT | -f FILE | --prompt-ids 1,2,3] [options]\n"
        "       echo TEXT | glm-run [options]\n"
        "       glm-run --chat [-sys TEXT] [--no-think]\n"
        "\n"
        "model and backend:\n"
        "  -m, --model DIR            model directory (default: %s)\n"
        "  --device cpu|cuda          backend (default: cuda when a GPU is usable, else cpu)\n"
        "  -t, --threads N            CPU threads (default: all cores)\n"
        "  -c, --ctx-size N           context size in tokens (default: the model's trained context,\n"
        "                             on the CPU capped to a KV cache of half the memory; a value\n"
        "                             past the trained context is used, with a warning)\n"
        "  -b, --batch-size N         prompt tokens per forward pass (default 512); Ctrl-C takes\n"
        "                             effect between passes\n"
        "  --kv-type bf16|fp8         CUDA KV cache type (default bf16)\n"
        "  --kv-frac F                CUDA: fraction of free GPU memory for the KV cache, in (0, 1]\n"
        "                             (default 0.9)\n",
        tool_default_model());
    tool_tp_usage(f, 29);
    tool_spec_usage(f, 29);
    fprintf(f,
        "prompt:\n"
        "  -p, --prompt TEXT          prompt text (encoded as the tokenizer's default: [gMASK]<sop> etc.)\n"
        "  -f, --file FILE            read the prompt from FILE ('-' = stdin); one trailing newline\n"
        "                             is dropped, as from stdin\n"
        "  --prompt-ids LIST          token ids used exactly as given, nothing prepended\n"
        "  --allow-empty              accept an empty text prompt (the template's tokens alone)\n"
        "  --echo                     print the prompt before the continuation\n"
        "generation:\n"
        "  -n, --n-predict N          tokens to generate (default 128, -1 = until EOS or context full;\n"
        "                             capped to what the context leaves after the prompt)\n"
        "  --temp T                   temperature >= 0 (default 0.8; 0 = greedy)\n"
        "  --top-k N                  top-k (default 40, 0 = off)\n"
        "  --top-p P                  top-p in (0, 1] (default 0.95, 1 = off)\n"
        "  --min-p P                  min-p in [0, 1) (default 0.05, 0 = off)\n"
        "  --repeat-penalty F         repetition penalty > 0 (default 1.0 = off)\n"
        "  --repeat-last-n N          history the penalties look at (default 64, -1 = all)\n"
        "  --presence-penalty F       (default 0)\n"
        "  --frequency-penalty F      (default 0)\n"
        "  -s, --seed N               random seed in [0, 2147483647] (default: a random one; printed\n"
        "                             on stderr and in --json)\n"
        "  --stop STR                 stop before the first STR in the output (repeatable, not empty)\n"
        "  --ignore-eos               keep generating past end-of-sequence tokens\n"
        "output:\n"
        "  --print-ids                print the generated ids, comma-separated, instead of text\n"
        "  --json                     print one JSON object: text, ids, finish_reason, seed, timings\n"
        "chat:\n"
        "  --chat                     interactive conversation from stdin (/exit to quit; Ctrl-C\n"
        "                             stops a reply, at the prompt it quits); the oldest turns are\n"
        "                             dropped when the conversation outgrows the context. Not with\n"
        "                             --json or --print-ids. The default glm-tiny is not chat-trained.\n"
        "  -sys, --system TEXT        system message (always kept)\n"
        "  --no-think                 turn thinking off in the chat template\n"
        "  -h, --help                 this text\n"
        "\n"
        "exit status: 0 done, 1 run-time failure, 2 usage error, 130 stopped by Ctrl-C\n");
}

typedef struct {
    glm_model *model;
    glm_ctx *ctx;
    glm_sampler *sampler;
    glm_tokenizer *tok;             /* NULL with --prompt-ids --print-ids */
    const glm_hparams *hp;
    int n_predict, ignore_eos, print_ids, json, n_ctx, n_batch;
    const char **stops;
    int n_stops;
    uint64_t seed;
    /* the sequence in the KV cache (prompt + generated) */
    int32_t *hist;
    int n_hist, cap_hist;
    glm_spec *spec;                 /* --draft > 0: the speculative decoder, else NULL */
    int n_draft;
} runner;

typedef struct {
    int n_prompt, n_gen, cap_gen;
    double t_prompt, t_gen;
    const char *finish;             /* "length", "eos", "stop", "context" or "interrupted" */
    glm_spec_stats spec;            /* --draft: this generation's steps and acceptance */
    char *text;
    size_t text_len;
    int32_t *ids;                   /* [n_gen] generated ids */
} gen_result;

static int is_eos(const runner *r, int32_t t) {
    for (int i = 0; i < r->hp->n_eos; i++) if (r->hp->eos[i] == t) return 1;
    return r->tok && t == glm_tokenizer_eos(r->tok);
}

/* Appends ids[0..n) to *v (of *len, capacity *cap); returns 0, or -1 out of memory. */
static int ids_push(int32_t **v, int *len, int *cap, const int32_t *ids, int n) {
    if (*len + n > *cap) {
        int nc = (*len + n) * 2;
        int32_t *nv = realloc(*v, sizeof *nv * (size_t)nc);
        if (!nv) return -1;
        *v = nv;
        *cap = nc;
    }
    memcpy(*v + *len, ids, sizeof *ids * (size_t)n);
    *len += n;
    return 0;
}

/* Appends s[0..n) to the text; returns 0, or -1 out of memory. */
static int append_text(gen_result *g, const char *s, size_t n) {
    char *nt = realloc(g->text, g->text_len + n + 1);
    if (!nt) return -1;
    g->text = nt;
    memcpy(g->text + g->text_len, s, n);
    g->text_len += n;
    g->text[g->text_len] = 0;
    return 0;
}

/* Writes text[*printed .. upto) to stdout. */
static void emit(gen_result *g, size_t *printed, size_t upto) {
    if (!g->text || upto <= *printed) return;
    fwrite(g->text + *printed, 1, upto - *printed, stdout);
    fflush(stdout);
    *printed = upto;
}

/* Looks for a stop string that ends after byte `from` - 1; when found, cuts the text
 * where it begins and returns 1. */
static int stop_scan(const runner *r, gen_result *g, size_t from) {
    for (int i = 0; i < r->n_stops; i++) {
        size_t sl = strlen(r->stops[i]);
        if (!sl || g->text_len < sl) continue;
        size_t b = from >= sl - 1 ? from - (sl - 1) : 0;
        char *hit = memmem(g->text + b, g->text_len - b, r->stops[i], sl);
        if (hit) {
            g->text_len = (size_t)(hit - g->text);
            g->text[g->text_len] = 0;
            return 1;
        }
    }
    return 0;
}

/* Ends a generation's text: what the stream decoder still holds (unless a stop string
 * ended it), a stop string the last characters completed, the rest printed when
 * streaming; frees the stream decoder. */
static void end_text(const runner *r, gen_result *g, glm_detok_stream *st, int stream_out, size_t printed) {
    size_t len = 0;
    const char *rest = NULL;
    if (st && strcmp(g->finish, "stop") != 0) glm_detok_stream_flush(st, &rest, &len);
    if (len) append_text(g, rest, len);
    if (strcmp(g->finish, "stop") != 0 && stop_scan(r, g, 0)) g->finish = "stop";
    if (stream_out) emit(g, &printed, g->text_len);
    glm_detok_stream_free(st);
}

/* Bytes at the end of the text that could be the start of a stop string (not printed yet). */
static size_t stop_holdback(const runner *r, const gen_result *g) {
    size_t hold = 0;
    for (int i = 0; i < r->n_stops; i++) {
        size_t sl = strlen(r->stops[i]);
        for (size_t k = sl > 1 ? sl - 1 : 0; k > hold; k--)
            if (k <= g->text_len && memcmp(g->text + g->text_len - k, r->stops[i], k) == 0) { hold = k; break; }
    }
    return hold;
}

/* The output side of one generated token t: kept in g->ids, end of sequence, detokenised
 * and streamed, stop strings. Returns 0 to go on, 1 when generation ends there
 * (g->finish set), -1 after printing an error. */
static int take_token(const runner *r, gen_result *g, glm_detok_stream *st, int stream_out, size_t *printed, int32_t t) {
    if (ids_push(&g->ids, &g->n_gen, &g->cap_gen, &t, 1)) { fprintf(stderr, "glm-run: error: out of memory\n"); return -1; }
    if (!r->ignore_eos && is_eos(r, t)) { g->finish = "eos"; return 1; }
    size_t len = 0;
    const char *piece = NULL;
    if (st) glm_detok_stream_push(st, t, &piece, &len);
    size_t old_len = g->text_len;
    if (len && append_text(g, piece, len)) { fprintf(stderr, "glm-run: error: out of memory\n"); return -1; }
    if (stop_scan(r, g, old_len)) { g->finish = "stop"; return 1; }
    if (stream_out) emit(g, printed, g->text_len - stop_holdback(r, g));
    return r->n_predict >= 0 && g->n_gen >= r->n_predict;
}

/* Feeds ids[0..n) to the KV cache in passes of n_batch tokens, checking for Ctrl-C between
 * passes; *last is the logits row of ids[n - 1] in the last pass. Returns 0, 1 when
 * interrupted (the cache then holds a prefix), or -1 after printing an error. */
static int prefill(runner *r, const int32_t *ids, int n, int *last) {
    for (int i = 0; i < n; i += r->n_batch) {
        if (tool_interrupted()) return 1;
        int k = n - i < r->n_batch ? n - i : r->n_batch;
        glm_batch b = { k, ids + i, NULL, NULL };
        int rc = glm_ctx_decode(r->ctx, &b);
        if (rc == GLM_WARN_KV_FULL) {
            fprintf(stderr, "glm-run: error: the KV cache is full after %d tokens of the prompt (%s)\n", r->n_hist, glm_last_error());
            return -1;
        }
        if (rc != GLM_OK) { fprintf(stderr, "glm-run: error: %s\n", glm_last_error()); return -1; }
        if (ids_push(&r->hist, &r->n_hist, &r->cap_hist, ids + i, k)) { fprintf(stderr, "glm-run: error: out of memory\n"); return -1; }
        *last = k - 1;
    }
    return 0;
}

/* Makes the KV cache hold `ids` (reusing the cached common prefix), then generates up to
 * n_predict tokens (or to the end of the context). Streams text to stdout unless
 * json/print_ids. Returns 0 (g->finish says why it ended), or -1 after printing an error. */
static int generate(runner *r, const int32_t *ids, int n, gen_result *g) {
    memset(g, 0, sizeof *g);
    g->finish = "length";
    int keep = 0;
    while (keep < r->n_hist && keep < n && r->hist[keep] == ids[keep]) keep++;
    if (keep < r->n_hist || keep == n) { /* the cache diverges: start over */
        glm_ctx_seq_clear(r->ctx, 0);
        r->n_hist = 0;
        keep = 0;
    }
    if (n >= r->n_ctx) {
        fprintf(stderr, "glm-run: error: the prompt (%d tokens) does not fit the context (-c %d) with room to generate\n", n, r->n_ctx);
        return -1;
    }
    double t0 = tool_now();
    int last = 0;
    int rc = prefill(r, ids + keep, n - keep, &last);
    g->n_prompt = r->n_hist - keep;
    g->t_prompt = tool_now() - t0;
    if (rc < 0) return -1;
    if (rc > 0) { g->finish = "interrupted"; return append_text(g, "", 0); }
    glm_detok_stream *st = NULL;
    if (r->tok && glm_detok_stream_new(r->tok, GLM_DETOK_SKIP_SPECIAL, &st) != GLM_OK) {
        fprintf(stderr, "glm-run: error: %s\n", glm_last_error());
        return -1;
    }
    int stream_out = !r->json && !r->print_ids, status = 0;
    size_t printed = 0;
    double t1 = tool_now();
    const float *logits = glm_ctx_logits(r->ctx, last); /* the prompt's last token */
    for (;;) {
        if (r->n_predict >= 0 && g->n_gen >= r->n_predict) break;
        if (r->n_hist >= r->n_ctx) { g->finish = "context"; break; }
        if (tool_interrupted()) { g->finish = "interrupted"; break; }
        int32_t t = glm_sampler_sample(r->sampler, logits, r->hp->n_vocab, r->hist, r->n_hist);
        if (t < 0) { fprintf(stderr, "glm-run: error: %s\n", glm_last_error()); status = -1; break; }
        int end = take_token(r, g, st, stream_out, &printed, t);
        if (end) { status = end < 0 ? -1 : 0; break; }   /* at n_predict: no need to decode the last one */
        glm_batch one = { 1, &t, NULL, NULL };
        rc = glm_ctx_decode(r->ctx, &one);
        if (rc == GLM_WARN_KV_FULL) { g->finish = "context"; break; }
        if (rc != GLM_OK) { fprintf(stderr, "glm-run: error: %s\n", glm_last_error()); status = -1; break; }
        if (ids_push(&r->hist, &r->n_hist, &r->cap_hist, &t, 1)) { fprintf(stderr, "glm-run: error: out of memory\n"); status = -1; break; }
        logits = glm_ctx_logits(r->ctx, 0);
    }
    end_text(r, g, st, stream_out, printed);
    g->t_gen = tool_now() - t1;
    if (!g->text && append_text(g, "", 0)) status = -1;
    return status;
}

/* generate() with speculative decoding (--draft): a fresh sequence, the prompt through
 * glm_spec_prefill, then steps of up to n_draft + 1 tokens. Same outputs and returns. */
static int generate_spec(runner *r, const int32_t *ids, int n, gen_result *g) {
    memset(g, 0, sizeof *g);
    g->finish = "length";
    glm_spec_seq_clear(r->spec, 0);
    r->n_hist = 0;
    if (n >= r->n_ctx) {
        fprintf(stderr, "glm-run: error: the prompt (%d tokens) does not fit the context (-c %d) with room to generate\n", n, r->n_ctx);
        return -1;
    }
    glm_spec_stats s0, s1;
    glm_spec_get_stats(r->spec, &s0);
    double t0 = tool_now();
    int32_t step[GLM_SPEC_MAX_DRAFT + 1];
    int k = 1;
    int rc = glm_spec_prefill(r->spec, 0, ids, n, &step[0]);
    g->n_prompt = n;
    g->t_prompt = tool_now() - t0;
    if (rc == GLM_WARN_KV_FULL) { fprintf(stderr, "glm-run: error: the KV cache is full for the prompt (%s)\n", glm_last_error()); return -1; }
    if (rc != GLM_OK) { fprintf(stderr, "glm-run: error: %s\n", glm_last_error()); return -1; }
    glm_detok_stream *st = NULL;
    if (r->tok && glm_detok_stream_new(r->tok, GLM_DETOK_SKIP_SPECIAL, &st) != GLM_OK) {
        fprintf(stderr, "glm-run: error: %s\n", glm_last_error());
        return -1;
    }
    int stream_out = !r->json && !r->print_ids, status = 0, end = r->n_predict == 0;
    size_t printed = 0;
    double t1 = tool_now();
    while (!end) {
        for (int j = 0; j < k && !end; j++) end = take_token(r, g, st, stream_out, &printed, step[j]);
        if (end) break;
        if (tool_interrupted()) { g->finish = "interrupted"; break; }
        rc = glm_spec_step(r->spec, 0, step, &k);
        if (rc == GLM_WARN_KV_FULL) { g->finish = "context"; break; }
        if (rc != GLM_OK) { fprintf(stderr, "glm-run: error: %s\n", glm_last_error()); status = -1; break; }
    }
    if (end < 0) status = -1;
    end_text(r, g, st, stream_out, printed);
    g->t_gen = tool_now() - t1;
    glm_spec_get_stats(r->spec, &s1);
    g->spec.steps = s1.steps - s0.steps;
    g->spec.drafted = s1.drafted - s0.drafted;
    g->spec.accepted = s1.accepted - s0.accepted;
    g->spec.emitted = s1.emitted - s0.emitted;
    if (!g->text && append_text(g, "", 0)) status = -1;
    return status;
}

static void print_timings(const runner *r, const gen_result *g) {
    if (tool_tp_quiet()) return;  /* --dist-init: rank 0 reports */
    fprintf(stderr, "\nglm-run: prompt %d tokens in %.3f s (%.2f tok/s), generated %d tokens in %.3f s (%.2f tok/s), "
            "finish: %s, seed %llu\n",
            g->n_prompt, g->t_prompt, g->t_prompt > 0 ? g->n_prompt / g->t_prompt : 0.0, g->n_gen, g->t_gen,
            g->t_gen > 0 ? g->n_gen / g->t_gen : 0.0, g->finish, (unsigned long long)r->seed);
    if (r->spec)
        fprintf(stderr, "glm-run: draft %d: acceptance %.3f (%llu of %llu drafted tokens), mean accepted length %.2f, "
                "%.2f tokens a verify step (%llu steps)\n", r->n_draft,
                g->spec.drafted ? (double)g->spec.accepted / (double)g->spec.drafted : 0.0, (unsigned long long)g->spec.accepted,
                (unsigned long long)g->spec.drafted, g->spec.steps ? (double)g->spec.accepted / (double)g->spec.steps : 0.0,
                g->spec.steps ? (double)g->spec.emitted / (double)g->spec.steps : 0.0, (unsigned long long)g->spec.steps);
    const char *kind = glm_ctx_tp_kind(r->ctx);
    if (strcmp(kind, "none")) {
        long n = 0;
        const double s = glm_ctx_comm_seconds(r->ctx, &n);
        fprintf(stderr, "glm-run: tensor parallel (%s): %ld collectives, %.3f s of rank 0's host time%s\n", kind, n, s,
                strcmp(kind, "nccl") ? "" : " (enqueue only: the sums run on the GPUs)");
    }
}

/* Prints the result as one JSON object; returns 0, or -1 out of memory. */
static int print_json(const runner *r, const gen_result *g) {
    size_t cap = g->text_len * 6 + 16;
    char *esc = malloc(cap);
    if (!esc) { fprintf(stderr, "glm-run: error: out of memory\n"); return -1; }
    json_escape(esc, cap, g->text, g->text_len);
    printf("{\"text\": %s, \"ids\": [", esc);
    for (int i = 0; i < g->n_gen; i++) printf("%s%d", i ? ", " : "", g->ids[i]);
    printf("], \"finish_reason\": \"%s\", \"seed\": %llu, \"timings\": {\"prompt_tokens\": %d, \"prompt_s\": %.6f, "
           "\"prompt_tok_s\": %.3f, \"gen_tokens\": %d, \"gen_s\": %.6f, \"gen_tok_s\": %.3f",
           g->finish, (unsigned long long)r->seed, g->n_prompt, g->t_prompt, g->t_prompt > 0 ? g->n_prompt / g->t_prompt : 0.0,
           g->n_gen, g->t_gen, g->t_gen > 0 ? g->n_gen / g->t_gen : 0.0);
    if (r->spec)
        printf(", \"draft\": %d, \"draft_steps\": %llu, \"drafted\": %llu, \"accepted\": %llu, \"acceptance\": %.4f, "
               "\"mean_accepted_length\": %.4f", r->n_draft, (unsigned long long)g->spec.steps, (unsigned long long)g->spec.drafted,
               (unsigned long long)g->spec.accepted, g->spec.drafted ? (double)g->spec.accepted / (double)g->spec.drafted : 0.0,
               g->spec.steps ? (double)g->spec.accepted / (double)g->spec.steps : 0.0);
    printf("}}\n");
    free(esc);
    return 0;
}

static void result_free(gen_result *g) { free(g->text); free(g->ids); }

/* Tokens kept free for the reply when a chat prompt is fitted into the context. */
static int chat_reserve(const runner *r) {
    int want = r->n_predict >= 0 ? r->n_predict : r->n_ctx / 4;
    return want < r->n_ctx / 2 ? want : r->n_ctx / 2;
}

/* Renders and tokenizes the conversation, dropping its oldest turns (a user message and
 * the replies after it; the system message stays) while it leaves less than the reply's
 * reserve. Returns 0 with *ids and *n set, 1 when the last message alone does not fit (the
 * message is then dropped), or -1 after printing an error. */
static int chat_prompt(runner *r, glm_chat_msg *msgs, int *n_msgs, int think, int32_t **ids, int *n) {
    glm_chat_format fmt = glm_tokenizer_chat_format(r->tok);
    int first = *n_msgs > 0 && !strcmp(msgs[0].role, "system"); /* the oldest droppable message */
    for (;;) {
        char *prompt;
        if (glm_chat_render(fmt, msgs, *n_msgs, 1, think, &prompt, NULL) != GLM_OK) {
            fprintf(stderr, "glm-run: error: %s\n", glm_last_error());
            return -1;
        }
        int rc = glm_tokenize(r->tok, prompt, strlen(prompt), GLM_TOK_PARSE_SPECIAL, ids, n);
        free(prompt);
        if (rc != GLM_OK) { fprintf(stderr, "glm-run: error: %s\n", glm_last_error()); return -1; }
        if (*n + chat_reserve(r) <= r->n_ctx) return 0;
        if (first >= *n_msgs - 1) { /* only the new message is left to drop */
            if (*n < r->n_ctx) return 0;
            fprintf(stderr, "glm-run: error: this message (%d tokens with the template) does not fit the context (-c %d); "
                    "it is dropped\n", *n, r->n_ctx);
            free(*ids);
            free((char *)msgs[--*n_msgs].content);
            return 1;
        }
        free(*ids);
        int end = first + 1; /* drop msgs[first] and the non-user messages after it */
        while (end < *n_msgs - 1 && strcmp(msgs[end].role, "user")) end++;
        for (int i = first; i < end; i++) free((char *)msgs[i].content);
        memmove(msgs + first, msgs + end, sizeof *msgs * (size_t)(*n_msgs - end));
        *n_msgs -= end - first;
        fprintf(stderr, "glm-run: the conversation outgrew the context (-c %d): dropped the oldest turn\n", r->n_ctx);
    }
}

/* The interactive chat loop; returns an exit code. */
static int chat(runner *r, const char *system, int think) {
    glm_chat_msg *msgs = NULL;
    int n_msgs = 0, cap_msgs = 0;
    int tty = isatty(0);
    char *line = NULL;
    size_t cap = 0;
    int rc = EXIT_OK;
    for (;;) {
        if (n_msgs + 3 > cap_msgs) { /* room for a system, a user and an assistant message */
            int nc = cap_msgs ? cap_msgs * 2 : 8;
            glm_chat_msg *nm = realloc(msgs, sizeof *nm * (size_t)nc);
            if (!nm) { fprintf(stderr, "glm-run: error: out of memory\n"); rc = EXIT_FAIL; break; }
            msgs = nm;
            cap_msgs = nc;
        }
        if (system && n_msgs == 0) msgs[n_msgs++] = (glm_chat_msg){ "system", strdup(system), NULL };
        if (tty) { fprintf(stderr, "\n> "); fflush(stderr); }
        ssize_t got = getline(&line, &cap, stdin);
        if (tool_interrupted()) { rc = EXIT_INTERRUPTED; break; }
        if (got < 0) break;
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = 0;
        if (!strcmp(line, "/exit") || !strcmp(line, "/quit")) break;
        if (!got) continue;
        msgs[n_msgs++] = (glm_chat_msg){ "user", strdup(line), NULL };
        int32_t *ids;
        int n;
        int fit = chat_prompt(r, msgs, &n_msgs, think, &ids, &n);
        if (fit < 0) { rc = EXIT_FAIL; break; }
        if (fit > 0) continue;
        gen_result g;
        int failed = generate(r, ids, n, &g);
        free(ids);
        if (failed) { result_free(&g); rc = EXIT_FAIL; break; }
        fputc('\n', stdout);
        fflush(stdout);
        msgs[n_msgs++] = (glm_chat_msg){ "assistant", strdup(g.text), NULL };
        if (!strcmp(g.finish, "interrupted")) fprintf(stderr, "[reply stopped]\n");
        if (!strcmp(g.finish, "context")) fprintf(stderr, "[reply cut: the context is full]\n");
        result_free(&g);
        tool_clear_interrupt();
    }
    free(line);
    for (int i = 0; i < n_msgs; i++) free((char *)msgs[i].content);
    free(msgs);
    return rc;
}

/* A seed no other run started at the same moment gets: from getrandom, else the clock's
 * nanoseconds mixed with the process id; in [0, 2^31) so that -s takes it back. */
static uint64_t random_seed(void) {
    uint64_t x;
    if (getrandom(&x, sizeof x, GRND_NONBLOCK) != (ssize_t)sizeof x) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        x = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) ^ ((uint64_t)getpid() << 32);
        x *= 0x9e3779b97f4a7c15ull;
        x ^= x >> 29;
    }
    return x & 0x7fffffff;
}

/* The default context size: the trained context; on the CPU no more than a KV cache of
 * half the physical memory holds (float32 K and V for every layer). */
static int default_ctx(const glm_hparams *hp, glm_device dev) {
    int n = hp->n_ctx_train > 0 ? hp->n_ctx_train : 4096;
    if (dev == GLM_DEVICE_CPU) {
        double per_token = 2.0 * hp->n_layer * hp->n_head_kv * hp->head_dim * sizeof(float);
        double mem = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
        if (mem > 0 && per_token > 0 && n > mem / 2 / per_token) {
            n = (int)(mem / 2 / per_token);
            if (!tool_tp_quiet())
                fprintf(stderr, "glm-run: context %d tokens: a KV cache for the trained context (%d) would take more than half "
                        "the memory (-c sets it)\n", n, hp->n_ctx_train);
        }
    }
    return n < 16 ? 16 : n;
}

/* Removes one trailing newline ("\n" or "\r\n") from text[0..*len), as llama.cpp does for
 * a prompt from a file or stdin. */
static void strip_newline(char *text, size_t *len) {
    if (*len && text[*len - 1] == '\n') text[--*len] = 0;
    if (*len && text[*len - 1] == '\r') text[--*len] = 0;
}

int main(int argc, char **argv) {
    tool_init("glm-run");
    tool_catch_sigint();
    const char *model_dir = NULL, *prompt = NULL, *file = NULL, *prompt_ids = NULL, *system = NULL;
    int chat_mode = 0, think = 1, echo = 0, seed_set = 0, ctx_set = 0, allow_empty = 0;
    runner r = { .n_predict = 128 };
    glm_sampler_params sp = glm_sampler_default_params();
    glm_ctx_params cp = glm_ctx_default_params();
    tool_tp_opts tpo = tool_tp_default();
    tool_spec_opts spo = { 0, 0 };
    cp.device = tool_default_device();
    const char *stops[argc]; /* --stop values point into argv */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return EXIT_OK; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_dir = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) prompt = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) file = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "--prompt-ids")) prompt_ids = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "--allow-empty")) allow_empty = 1;
        else if (!strcmp(a, "--echo")) echo = 1;
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) r.n_predict = tool_int(a, tool_arg(argc, argv, &i), -1, 2147483647);
        else if (!strcmp(a, "--temp")) sp.temp = tool_float_in(a, tool_arg(argc, argv, &i), '[', 0, INFINITY, ')');
        else if (!strcmp(a, "--top-k")) sp.top_k = tool_int(a, tool_arg(argc, argv, &i), 0, 1 << 30);
        else if (!strcmp(a, "--top-p")) sp.top_p = tool_float_in(a, tool_arg(argc, argv, &i), '(', 0, 1, ']');
        else if (!strcmp(a, "--min-p")) sp.min_p = tool_float_in(a, tool_arg(argc, argv, &i), '[', 0, 1, ')');
        else if (!strcmp(a, "--repeat-penalty")) sp.repeat_penalty = tool_float_in(a, tool_arg(argc, argv, &i), '(', 0, INFINITY, ')');
        else if (!strcmp(a, "--repeat-last-n")) sp.repeat_last_n = tool_int(a, tool_arg(argc, argv, &i), -1, 1 << 30);
        else if (!strcmp(a, "--presence-penalty")) sp.presence_penalty = tool_float(a, tool_arg(argc, argv, &i));
        else if (!strcmp(a, "--frequency-penalty")) sp.frequency_penalty = tool_float(a, tool_arg(argc, argv, &i));
        else if (!strcmp(a, "-s") || !strcmp(a, "--seed")) { sp.seed = (uint64_t)tool_int(a, tool_arg(argc, argv, &i), 0, 2147483647); seed_set = 1; }
        else if (!strcmp(a, "--stop")) {
            stops[r.n_stops] = tool_arg(argc, argv, &i);
            if (!*stops[r.n_stops]) tool_usage_error("--stop expects a non-empty string");
            r.n_stops++;
        }
        else if (!strcmp(a, "--ignore-eos")) r.ignore_eos = 1;
        else if (!strcmp(a, "--print-ids")) r.print_ids = 1;
        else if (!strcmp(a, "--json")) r.json = 1;
        else if (!strcmp(a, "--chat")) chat_mode = 1;
        else if (!strcmp(a, "-sys") || !strcmp(a, "--system")) system = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "--no-think")) think = 0;
        else if (!strcmp(a, "--device")) cp.device = tool_device(tool_arg(argc, argv, &i));
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) cp.n_threads = tool_int(a, tool_arg(argc, argv, &i), 1, 1024);
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) { cp.n_ctx = tool_int(a, tool_arg(argc, argv, &i), 16, 1 << 24); ctx_set = 1; }
        else if (!strcmp(a, "-b") || !strcmp(a, "--batch-size")) cp.n_batch = tool_int(a, tool_arg(argc, argv, &i), 1, 1 << 16);
        else if (!strcmp(a, "--kv-frac")) cp.kv_frac = tool_float_in(a, tool_arg(argc, argv, &i), '(', 0, 1, ']');
        else if (!strcmp(a, "--kv-type")) cp.kv_type = tool_kv_type(tool_arg(argc, argv, &i));
        else if (tool_tp_flag(argc, argv, &i, &tpo)) continue;
        else if (tool_spec_flag(argc, argv, &i, &spo)) continue;
        else tool_usage_error("unknown argument '%s' (see --help)", a);
    }
    r.stops = stops;
    if ((prompt != NULL) + (file != NULL) + (prompt_ids != NULL) > 1) tool_usage_error("give only one of -p, -f and --prompt-ids");
    if (chat_mode && (prompt || file || prompt_ids)) tool_usage_error("--chat reads the conversation from stdin: no -p, -f or --prompt-ids");
    if (chat_mode && (r.json || r.print_ids)) tool_usage_error("--chat writes each reply as text: it does not take %s", r.json ? "--json" : "--print-ids");
    if (!chat_mode && !prompt && !file && !prompt_ids && isatty(0))
        tool_usage_error("no prompt: give -p TEXT, -f FILE, --prompt-ids, pipe text on stdin, or use --chat");
    int tp_rc = tool_tp_check(&tpo, cp.device);
    if (!tp_rc && chat_mode && tpo.dist_init) {
        fprintf(stderr, "glm-run: error: --chat with --dist-init: every process would read its own stdin (give the prompt "
                "with -p or -f)\n");
        tp_rc = EXIT_USAGE;
    }
    if (tp_rc) { tool_tp_free(&tpo); return tp_rc; }
    if (chat_mode && spo.n_draft) {
        fprintf(stderr, "glm-run: error: --draft with --chat: not implemented\n");
        tool_tp_free(&tpo);
        return EXIT_FAIL;
    }
    int spec_rc = tool_spec_apply("glm-run", &spo, &cp);
    if (spec_rc) { tool_tp_free(&tpo); return spec_rc; }
    r.n_draft = spo.n_draft;
    if (!seed_set && tpo.dist_init) {  /* every process must draw the same tokens: a seed from the --dist-init spec */
        uint64_t h = 1469598103934665603ull;
        for (const char *c = tpo.dist_init; *c; c++) h = (h ^ (unsigned char)*c) * 1099511628211ull;
        sp.seed = (h ^ h >> 31) & 0x7fffffff;
        seed_set = 1;
    }
    r.seed = sp.seed = seed_set ? sp.seed : random_seed();
    /* --dist-init: the processes of ranks other than 0 run every step and write nothing */
    if (tool_tp_quiet() && !freopen("/dev/null", "w", stdout)) {
        fprintf(stderr, "glm-run: error: /dev/null: cannot open\n");
        tool_tp_free(&tpo);
        return EXIT_FAIL;
    }
    if (!model_dir) model_dir = tool_default_model();

    /* the prompt, as text or ids */
    int rc = EXIT_FAIL;
    char *text = NULL;
    size_t text_len = 0;
    int32_t *ids = NULL;
    int n_ids = 0;
    if (prompt_ids) {
        char err[160];
        if (tool_parse_ids(prompt_ids, &ids, &n_ids, err, sizeof err)) tool_usage_error("--prompt-ids: %s", err);
        if (!n_ids) { free(ids); tool_usage_error("--prompt-ids is empty"); }
    } else if (prompt) {
        text = strdup(prompt);
        text_len = strlen(prompt);
        if (!text) { fprintf(stderr, "glm-run: error: out of memory\n"); goto out; }
    } else if (!chat_mode) {
        text = tool_read_text("glm-run", file ? file : "-", &text_len);
        if (!text) { rc = tool_interrupted() ? EXIT_INTERRUPTED : EXIT_FAIL; goto out; }
        strip_newline(text, &text_len);
    }
    if (text && !text_len && !allow_empty) {
        fprintf(stderr, "glm-run: error: the prompt is empty (--allow-empty generates from the template's start tokens alone)\n");
        rc = EXIT_USAGE;
        goto out;
    }

    double t_load = tool_now();
    r.model = tool_load_model_spec("glm-run", model_dir, &spo);
    if (!r.model) { rc = tool_interrupted() ? EXIT_INTERRUPTED : EXIT_FAIL; goto out; }
    r.hp = glm_model_hparams(r.model);
    for (int i = 0; prompt_ids && i < n_ids; i++)
        if (ids[i] >= r.hp->n_vocab) {
            fprintf(stderr, "glm-run: error: --prompt-ids: token %d (index %d) is outside the vocabulary (%d)\n", ids[i], i, r.hp->n_vocab);
            rc = EXIT_USAGE;
            goto out;
        }
    if (!prompt_ids || !r.print_ids) {
        if (glm_tokenizer_load_dir(model_dir, &r.tok) != GLM_OK) {
            fprintf(stderr, "glm-run: error: %s%s\n", glm_last_error(), prompt_ids ? " (use --print-ids to print ids without a tokenizer)" : "");
            goto out;
        }
    }
    if (text && glm_tokenize(r.tok, text, text_len, GLM_TOK_PARSE_SPECIAL | GLM_TOK_ADD_SPECIAL, &ids, &n_ids) != GLM_OK) {
        fprintf(stderr, "glm-run: error: prompt: %s\n", glm_last_error());
        goto out;
    }
    if (text && !n_ids) { fprintf(stderr, "glm-run: error: the prompt encodes to no tokens\n"); rc = EXIT_USAGE; goto out; }

    if (ctx_set) tool_warn_ctx("glm-run", cp.n_ctx, r.model);
    else cp.n_ctx = default_ctx(r.hp, cp.device);
    if (cp.n_batch > cp.n_ctx) cp.n_batch = cp.n_ctx;
    r.n_ctx = cp.n_ctx;
    r.n_batch = cp.n_batch;
    if (!chat_mode && n_ids < r.n_ctx && r.n_predict > r.n_ctx - n_ids) {
        if (!tool_tp_quiet())
            fprintf(stderr, "glm-run: -n %d is more than the context leaves after the prompt (%d of %d tokens): generating at "
                    "most %d\n", r.n_predict, n_ids, r.n_ctx, r.n_ctx - n_ids);
        r.n_predict = r.n_ctx - n_ids;
    }
    tp_rc = tool_tp_apply(&tpo, r.model, &cp);
    if (tp_rc) { rc = tp_rc; goto out; }
    if (glm_ctx_new(r.model, &cp, &r.ctx) != GLM_OK) { fprintf(stderr, "glm-run: error: %s\n", glm_last_error()); goto out; }
    if (!(r.sampler = glm_sampler_new(&sp))) { fprintf(stderr, "glm-run: error: %s\n", glm_last_error()); goto out; }
    if (r.n_draft && glm_spec_new(r.ctx, r.n_draft, &sp, &r.spec) != GLM_OK) {
        fprintf(stderr, "glm-run: error: --draft %d: %s\n", r.n_draft, glm_last_error());
        goto out;
    }
    if (!tool_tp_quiet())
        fprintf(stderr, "glm-run: %s\nglm-run: loaded %s in %.2f s on %s, context %d, seed %llu\n", glm_model_desc(r.model),
                model_dir, tool_now() - t_load, cp.device == GLM_DEVICE_CUDA ? "cuda" : "cpu", r.n_ctx, (unsigned long long)r.seed);

    if (chat_mode) {
        rc = chat(&r, system, think);
    } else {
        if (echo && text && !r.json && !r.print_ids) { fwrite(text, 1, text_len, stdout); fflush(stdout); }
        gen_result g;
        if ((r.spec ? generate_spec(&r, ids, n_ids, &g) : generate(&r, ids, n_ids, &g)) == 0) {
            rc = !strcmp(g.finish, "interrupted") ? EXIT_INTERRUPTED : EXIT_OK;
            if (r.json) { if (print_json(&r, &g)) rc = EXIT_FAIL; }
            else if (r.print_ids) {
                for (int i = 0; i < g.n_gen; i++) printf("%s%d", i ? "," : "", g.ids[i]);
                printf("\n");
            } else if (isatty(1)) printf("\n");
            print_timings(&r, &g);
        }
        result_free(&g);
    }
    if (fflush(stdout) != 0 && rc == EXIT_OK) { fprintf(stderr, "glm-run: error: writing the output failed\n"); rc = EXIT_FAIL; }
out:
    free(ids);
    free(text);
    free(r.hist);
    glm_sampler_free(r.sampler);
    glm_spec_free(r.spec);
    glm_tokenizer_free(r.tok);
    glm_ctx_free(r.ctx);
    tool_tp_free(&tpo);  /* after the context, which may point to the GPU list */
    glm_model_free(r.model);
    return rc;
}
