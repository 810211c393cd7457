/* glm-run - generate text with a GLM-4 MoE model: a prompt from -p, -f, stdin or
 * --prompt-ids, text streamed to stdout as it is decoded, diagnostics and timings on
 * stderr; --chat for an interactive conversation with the model's chat template. */
#include "common.h"
#include "json.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
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
        "  -c, --ctx-size N           context size in tokens (default 4096)\n"
        "  -b, --batch-size N         prompt tokens per forward pass (default 512)\n"
        "  --kv-type bf16|fp8         CUDA KV cache type (default bf16)\n"
        "  --kv-frac F                CUDA: fraction of free GPU memory for the KV cache (default 0.9)\n"
        "prompt:\n"
        "  -p, --prompt TEXT          prompt text (encoded as the tokenizer's default: [gMASK]<sop> etc.)\n"
        "  -f, --file FILE            read the prompt from FILE ('-' = stdin)\n"
        "  --prompt-ids LIST          token ids used exactly as given, nothing prepended\n"
        "  --echo                     print the prompt before the continuation\n"
        "generation:\n"
        "  -n, --n-predict N          tokens to generate (default 128, -1 = until EOS or context full)\n"
        "  --temp T                   temperature (default 0.8; 0 = greedy)\n"
        "  --top-k N                  top-k (default 40, 0 = off)\n"
        "  --top-p P                  top-p (default 0.95, 1 = off)\n"
        "  --min-p P                  min-p (default 0.05, 0 = off)\n"
        "  --repeat-penalty F         repetition penalty (default 1.0 = off)\n"
        "  --repeat-last-n N          history the penalties look at (default 64, -1 = all)\n"
        "  --presence-penalty F       (default 0)\n"
        "  --frequency-penalty F      (default 0)\n"
        "  -s, --seed N               random seed (default: from the clock; printed on stderr)\n"
        "  --stop STR                 stop when the output ends with STR (repeatable)\n"
        "  --ignore-eos               keep generating past end-of-sequence tokens\n"
        "output:\n"
        "  --print-ids                print the generated ids, comma-separated, instead of text\n"
        "  --json                     print one JSON object: text, ids, finish_reason, timings\n"
        "chat:\n"
        "  --chat                     interactive conversation (/exit to quit, Ctrl-C stops a reply)\n"
        "  -sys, --system TEXT        system message\n"
        "  --no-think                 turn thinking off in the chat template\n"
        "  -h, --help                 this text\n",
        tool_default_model());
}

static volatile sig_atomic_t interrupted;
static void on_sigint(int sig) { (void)sig; interrupted = 1; }

typedef struct {
    glm_model *model;
    glm_ctx *ctx;
    glm_sampler *sampler;
    glm_tokenizer *tok;             /* NULL with --prompt-ids --print-ids */
    const glm_hparams *hp;
    int n_predict, ignore_eos, print_ids, json, n_ctx;
    const char **stops;
    int n_stops;
    /* the sequence so far (prompt + generated), mirrors the KV cache */
    int32_t *hist;
    int n_hist, cap_hist;
} runner;

typedef struct {
    int n_prompt, n_gen;
    double t_prompt, t_gen;
    const char *finish;
    char *text;
    size_t text_len;
    int32_t *ids;
} gen_result;

static int is_eos(const runner *r, int32_t t) {
    for (int i = 0; i < r->hp->n_eos; i++) if (r->hp->eos[i] == t) return 1;
    return r->tok && t == glm_tokenizer_eos(r->tok);
}

static int hist_push(runner *r, const int32_t *ids, int n) {
    if (r->n_hist + n > r->cap_hist) {
        int cap = (r->n_hist + n) * 2;
        int32_t *nh = realloc(r->hist, sizeof *nh * (size_t)cap);
        if (!nh) return -1;
        r->hist = nh;
        r->cap_hist = cap;
    }
    memcpy(r->hist + r->n_hist, ids, sizeof *ids * (size_t)n);
    r->n_hist += n;
    return 0;
}

static void append_text(gen_result *g, const char *s, size_t n) {
    char *nt = realloc(g->text, g->text_len + n + 1);
    if (!nt) return;
    g->text = nt;
    memcpy(g->text + g->text_len, s, n);
    g->text_len += n;
    g->text[g->text_len] = 0;
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

/* Makes the KV cache hold `ids` (reusing the cached common prefix), then generates.
 * Streams text to stdout unless json/print_ids. Returns 0, or -1 after printing an error. */
static int generate(runner *r, const int32_t *ids, int n, gen_result *g) {
    memset(g, 0, sizeof *g);
    int keep = 0;
    while (keep < r->n_hist && keep < n && r->hist[keep] == ids[keep]) keep++;
    if (keep < r->n_hist || keep == n) { /* the cache diverges: start over */
        glm_ctx_seq_clear(r->ctx, 0);
        r->n_hist = 0;
        keep = 0;
    }
    if (n - keep + 1 > r->n_ctx - r->n_hist) {
        fprintf(stderr, "glm-run: error: the prompt (%d tokens) does not fit the context (-c %d)\n", n, r->n_ctx);
        return -1;
    }
    double t0 = tool_now();
    glm_batch b = { n - keep, ids + keep, NULL, NULL };
    int rc = glm_ctx_decode(r->ctx, &b);
    if (rc != GLM_OK) { fprintf(stderr, "glm-run: error: %s\n", glm_last_error()); return -1; }
    hist_push(r, ids + keep, n - keep);
    g->n_prompt = n - keep;
    g->t_prompt = tool_now() - t0;
    g->ids = malloc(sizeof(int32_t) * (size_t)(r->n_predict > 0 ? r->n_predict : r->n_ctx) + 4);
    glm_detok_stream *st = NULL;
    if (r->tok && glm_detok_stream_new(r->tok, GLM_DETOK_SKIP_SPECIAL, &st) != GLM_OK) {
        fprintf(stderr, "glm-run: error: %s\n", glm_last_error());
        return -1;
    }
    int stream_out = !r->json && !r->print_ids;
    size_t printed = 0;
    double t1 = tool_now();
    g->finish = "length";
    const float *logits = glm_ctx_logits(r->ctx, n - keep - 1); /* the prompt's last row */
    for (;;) {
        if (r->n_predict >= 0 && g->n_gen >= r->n_predict) break;
        if (r->n_hist >= r->n_ctx) { g->finish = "context"; break; }
        if (interrupted) { g->finish = "interrupted"; break; }
        int32_t t = glm_sampler_sample(r->sampler, logits, r->hp->n_vocab, r->hist, r->n_hist);
        if (t < 0) { fprintf(stderr, "glm-run: error: %s\n", glm_last_error()); glm_detok_stream_free(st); return -1; }
        g->ids[g->n_gen++] = t;
        if (!r->ignore_eos && is_eos(r, t)) { g->finish = "eos"; break; }
        size_t len = 0;
        const char *piece = NULL;
        if (st) glm_detok_stream_push(st, t, &piece, &len);
        size_t old_len = g->text_len;
        if (len) append_text(g, piece, len);
        if (stop_scan(r, g, old_len)) {
            if (stream_out) emit(g, &printed, g->text_len);
            g->finish = "stop";
            hist_push(r, &t, 1);
            break;
        }
        if (stream_out) emit(g, &printed, g->text_len - stop_holdback(r, g));
        glm_batch one = { 1, &t, NULL, NULL };
        rc = glm_ctx_decode(r->ctx, &one);
        if (rc != GLM_OK) { fprintf(stderr, "glm-run: error: %s\n", glm_last_error()); glm_detok_stream_free(st); return -1; }
        hist_push(r, &t, 1);
        logits = glm_ctx_logits(r->ctx, 0);
    }
    size_t len = 0;
    const char *rest = NULL;
    if (st && strcmp(g->finish, "stop") != 0) glm_detok_stream_flush(st, &rest, &len);
    if (len) append_text(g, rest, len);
    if (stream_out) emit(g, &printed, g->text_len);
    glm_detok_stream_free(st);
    g->t_gen = tool_now() - t1;
    if (!g->text) append_text(g, "", 0);
    return 0;
}

static void print_timings(const gen_result *g) {
    fprintf(stderr, "\nglm-run: prompt %d tokens in %.3f s (%.2f tok/s), generated %d tokens in %.3f s (%.2f tok/s), finish: %s\n",
            g->n_prompt, g->t_prompt, g->t_prompt > 0 ? g->n_prompt / g->t_prompt : 0.0, g->n_gen, g->t_gen,
            g->t_gen > 0 ? g->n_gen / g->t_gen : 0.0, g->finish);
}

static void print_json(const gen_result *g) {
    size_t cap = g->text_len * 6 + 16;
    char *esc = malloc(cap);
    json_escape(esc, cap, g->text, g->text_len);
    printf("{\"text\": %s, \"ids\": [", esc);
    for (int i = 0; i < g->n_gen; i++) printf("%s%d", i ? ", " : "", g->ids[i]);
    printf("], \"finish_reason\": \"%s\", \"timings\": {\"prompt_tokens\": %d, \"prompt_s\": %.6f, \"prompt_tok_s\": %.3f, "
           "\"gen_tokens\": %d, \"gen_s\": %.6f, \"gen_tok_s\": %.3f}}\n",
           g->finish, g->n_prompt, g->t_prompt, g->t_prompt > 0 ? g->n_prompt / g->t_prompt : 0.0, g->n_gen, g->t_gen,
           g->t_gen > 0 ? g->n_gen / g->t_gen : 0.0);
    free(esc);
}

static void result_free(gen_result *g) { free(g->text); free(g->ids); }

/* The interactive chat loop; returns an exit code. */
static int chat(runner *r, const char *system, int think) {
    glm_chat_msg *msgs = NULL;
    glm_chat_format fmt = glm_tokenizer_chat_format(r->tok);
    int n_msgs = 0;
    if (system) {
        msgs = realloc(msgs, sizeof *msgs * (size_t)(n_msgs + 1));
        msgs[n_msgs++] = (glm_chat_msg){ "system", strdup(system), NULL };
    }
    int tty = isatty(0);
    char *line = NULL;
    size_t cap = 0;
    int rc = EXIT_OK;
    for (;;) {
        if (tty) { fprintf(stderr, "\n> "); fflush(stderr); }
        interrupted = 0;
        ssize_t got = getline(&line, &cap, stdin);
        if (got < 0 || interrupted) break;
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = 0;
        if (!strcmp(line, "/exit") || !strcmp(line, "/quit")) break;
        if (!got) continue;
        msgs = realloc(msgs, sizeof *msgs * (size_t)(n_msgs + 2));
        msgs[n_msgs++] = (glm_chat_msg){ "user", strdup(line), NULL };
        int32_t *ids;
        int n;
        char *prompt;
        if (glm_chat_render(fmt, msgs, n_msgs, 1, think, &prompt, NULL) != GLM_OK ||
            glm_tokenize(r->tok, prompt, strlen(prompt), GLM_TOK_PARSE_SPECIAL, &ids, &n) != GLM_OK) {
            fprintf(stderr, "glm-run: error: %s\n", glm_last_error());
            rc = EXIT_FAIL;
            break;
        }
        free(prompt);
        gen_result g;
        if (generate(r, ids, n, &g)) { free(ids); rc = EXIT_FAIL; break; }
        free(ids);
        fputc('\n', stdout);
        fflush(stdout);
        msgs[n_msgs++] = (glm_chat_msg){ "assistant", strdup(g.text ? g.text : ""), NULL };
        if (!strcmp(g.finish, "interrupted")) fprintf(stderr, "[reply stopped]\n");
        result_free(&g);
    }
    free(line);
    for (int i = 0; i < n_msgs; i++) free((char *)msgs[i].content);
    free(msgs);
    return rc;
}

int main(int argc, char **argv) {
    const char *model_dir = NULL, *prompt = NULL, *file = NULL, *prompt_ids = NULL, *system = NULL;
    int chat_mode = 0, think = 1, echo = 0, seed_set = 0;
    runner r = { .n_predict = 128 };
    glm_sampler_params sp = glm_sampler_default_params();
    glm_ctx_params cp = glm_ctx_default_params();
    cp.device = tool_default_device();
    const char **stops = calloc((size_t)argc, sizeof *stops);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return EXIT_OK; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_dir = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) prompt = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) file = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "--prompt-ids")) prompt_ids = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "--echo")) echo = 1;
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) r.n_predict = tool_int(a, tool_arg(argc, argv, &i), -1, 1 << 30);
        else if (!strcmp(a, "--temp")) sp.temp = tool_float(a, tool_arg(argc, argv, &i));
        else if (!strcmp(a, "--top-k")) sp.top_k = tool_int(a, tool_arg(argc, argv, &i), 0, 1 << 30);
        else if (!strcmp(a, "--top-p")) sp.top_p = tool_float(a, tool_arg(argc, argv, &i));
        else if (!strcmp(a, "--min-p")) sp.min_p = tool_float(a, tool_arg(argc, argv, &i));
        else if (!strcmp(a, "--repeat-penalty")) sp.repeat_penalty = tool_float(a, tool_arg(argc, argv, &i));
        else if (!strcmp(a, "--repeat-last-n")) sp.repeat_last_n = tool_int(a, tool_arg(argc, argv, &i), -1, 1 << 30);
        else if (!strcmp(a, "--presence-penalty")) sp.presence_penalty = tool_float(a, tool_arg(argc, argv, &i));
        else if (!strcmp(a, "--frequency-penalty")) sp.frequency_penalty = tool_float(a, tool_arg(argc, argv, &i));
        else if (!strcmp(a, "-s") || !strcmp(a, "--seed")) { sp.seed = (uint64_t)tool_int(a, tool_arg(argc, argv, &i), 0, 2147483647); seed_set = 1; }
        else if (!strcmp(a, "--stop")) stops[r.n_stops++] = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "--ignore-eos")) r.ignore_eos = 1;
        else if (!strcmp(a, "--print-ids")) r.print_ids = 1;
        else if (!strcmp(a, "--json")) r.json = 1;
        else if (!strcmp(a, "--chat")) chat_mode = 1;
        else if (!strcmp(a, "-sys") || !strcmp(a, "--system")) system = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "--no-think")) think = 0;
        else if (!strcmp(a, "--device")) cp.device = tool_device(tool_arg(argc, argv, &i));
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) cp.n_threads = tool_int(a, tool_arg(argc, argv, &i), 1, 1024);
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) cp.n_ctx = tool_int(a, tool_arg(argc, argv, &i), 16, 1 << 24);
        else if (!strcmp(a, "-b") || !strcmp(a, "--batch-size")) cp.n_batch = tool_int(a, tool_arg(argc, argv, &i), 1, 1 << 16);
        else if (!strcmp(a, "--kv-frac")) cp.kv_frac = tool_float(a, tool_arg(argc, argv, &i));
        else if (!strcmp(a, "--kv-type")) {
            const char *v = tool_arg(argc, argv, &i);
            if (!strcmp(v, "bf16")) cp.kv_type = GLM_KV_BF16;
            else if (!strcmp(v, "fp8")) cp.kv_type = GLM_KV_FP8;
            else { fprintf(stderr, "glm-run: error: --kv-type expects bf16 or fp8, got '%s'\n", v); return EXIT_USAGE; }
        } else { fprintf(stderr, "glm-run: error: unknown argument '%s' (see --help)\n", a); return EXIT_USAGE; }
    }
    r.stops = stops;
    if ((prompt != NULL) + (file != NULL) + (prompt_ids != NULL) > 1) {
        fprintf(stderr, "glm-run: error: give only one of -p, -f and --prompt-ids\n");
        return EXIT_USAGE;
    }
    if (chat_mode && (prompt || file || prompt_ids)) { fprintf(stderr, "glm-run: error: --chat reads the conversation from stdin\n"); return EXIT_USAGE; }
    if (!seed_set) sp.seed = (uint64_t)time(NULL);
    if (!model_dir) model_dir = tool_default_model();

    /* the prompt, as text or ids */
    char *text = NULL;
    size_t text_len = 0;
    int32_t *ids = NULL;
    int n_ids = 0;
    if (prompt_ids) {
        char err[160];
        if (tool_parse_ids(prompt_ids, &ids, &n_ids, err, sizeof err)) { fprintf(stderr, "glm-run: error: --prompt-ids: %s\n", err); return EXIT_USAGE; }
        if (!n_ids) { fprintf(stderr, "glm-run: error: --prompt-ids is empty\n"); return EXIT_USAGE; }
    } else if (prompt) {
        text = strdup(prompt);
        text_len = strlen(text);
    } else if (file || (!chat_mode && !isatty(0))) {
        text = tool_read_text("glm-run", file ? file : "-", &text_len);
        if (!text) return EXIT_FAIL;
    } else if (!chat_mode) {
        fprintf(stderr, "glm-run: error: no prompt: give -p TEXT, -f FILE, --prompt-ids, pipe text on stdin, or use --chat\n");
        return EXIT_USAGE;
    }

    double t_load = tool_now();
    r.model = tool_load_model("glm-run", model_dir);
    if (!r.model) return EXIT_FAIL;
    r.hp = glm_model_hparams(r.model);
    if (!prompt_ids || !r.print_ids) {
        if (glm_tokenizer_load_dir(model_dir, &r.tok) != GLM_OK) {
            fprintf(stderr, "glm-run: error: %s%s\n", glm_last_error(), prompt_ids ? " (use --print-ids to print ids without a tokenizer)" : "");
            return EXIT_FAIL;
        }
    }
    if (text && glm_tokenize(r.tok, text, text_len, GLM_TOK_PARSE_SPECIAL | GLM_TOK_ADD_SPECIAL, &ids, &n_ids) != GLM_OK) {
        fprintf(stderr, "glm-run: error: prompt: %s\n", glm_last_error());
        return EXIT_FAIL;
    }
    if (text && !n_ids) { fprintf(stderr, "glm-run: error: the prompt encodes to no tokens\n"); return EXIT_USAGE; }
    for (int i = 0; i < n_ids; i++)
        if (ids[i] >= r.hp->n_vocab) {
            fprintf(stderr, "glm-run: error: prompt token %d (index %d) is outside the vocabulary (%d)\n", ids[i], i, r.hp->n_vocab);
            return EXIT_USAGE;
        }
    if (cp.n_ctx > r.hp->n_ctx_train) cp.n_ctx = r.hp->n_ctx_train;
    if (cp.n_batch > cp.n_ctx) cp.n_batch = cp.n_ctx;
    r.n_ctx = cp.n_ctx;
    if (glm_ctx_new(r.model, &cp, &r.ctx) != GLM_OK) { fprintf(stderr, "glm-run: error: %s\n", glm_last_error()); return EXIT_FAIL; }
    r.sampler = glm_sampler_new(&sp);
    fprintf(stderr, "glm-run: %s\nglm-run: loaded %s in %.2f s on %s, seed %llu\n", glm_model_desc(r.model), model_dir,
            tool_now() - t_load, cp.device == GLM_DEVICE_CUDA ? "cuda" : "cpu", (unsigned long long)sp.seed);

    struct sigaction sa = {0};
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);

    int rc = EXIT_OK;
    if (chat_mode) {
        rc = chat(&r, system, think);
    } else {
        if (echo && text && !r.json && !r.print_ids) { fwrite(text, 1, text_len, stdout); fflush(stdout); }
        gen_result g;
        if (generate(&r, ids, n_ids, &g)) rc = EXIT_FAIL;
        else {
            if (r.json) print_json(&g);
            else if (r.print_ids) {
                for (int i = 0; i < g.n_gen; i++) printf("%s%d", i ? "," : "", g.ids[i]);
                printf("\n");
            } else if (isatty(1)) printf("\n");
            print_timings(&g);
            result_free(&g);
        }
    }
    fflush(stdout);
    free(ids);
    free(text);
    free(stops);
    free(r.hist);
    glm_sampler_free(r.sampler);
    glm_tokenizer_free(r.tok);
    glm_ctx_free(r.ctx);
    glm_model_free(r.model);
    return rc;
}
