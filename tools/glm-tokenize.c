/* glm-tokenize - encode text with a model's tokenizer.json and print the tokens, or
 * decode ids back to text, like llama-tokenize. --ids prints exactly what HF
 * tokenizers' encode(text, add_special_tokens=False).ids gives; --bench measures
 * single-thread encode speed. Exit status: 0, 1 when a run fails (a tokenizer that
 * does not load, text that is not UTF-8), 2 for a usage error (an unknown flag, ids
 * that do not parse or are not in the vocabulary). */
#include "common.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Prints the usage text to f. */
static void usage(FILE *f) {
    fprintf(f,
        "usage: glm-tokenize [-m DIR | --tokenizer FILE] [-p TEXT | -f FILE] [options]\n"
        "\n"
        "Encodes the text (from -p, -f, or standard input) and prints one token a line as\n"
        "  id -> 'piece'\n"
        "\n"
        "  -m, --model DIR        model directory holding tokenizer.json (default: %s)\n"
        "  --tokenizer FILE       a tokenizer.json file\n"
        "  -p, --prompt TEXT      text to encode\n"
        "  -f, --file FILE        read the text from FILE ('-' = stdin)\n"
        "  --ids                  print only the ids, as [a, b, c]\n"
        "  --show-count           print the number of tokens at the end\n"
        "  --no-parse-special     encode special-token strings as plain text\n"
        "  --add-special          apply the post-processor template (e.g. [gMASK]<sop>), as HF's\n"
        "                         default encode does\n"
        "  --decode               read ids (comma, space or bracket separated) and print the text\n"
        "  --json                 print JSON: {\"ids\": [...], \"tokens\": [...]} or {\"text\": ...}\n"
        "  --bench N              encode the text N times on one thread, whole and line by line,\n"
        "                         and print MB/s\n"
        "  -h, --help             this text\n",
        tool_default_model());
}

/* Prints s[0..n) as a JSON string literal. */
static void json_str(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c == '\n') fputs("\\n", f);
        else if (c == '\r') fputs("\\r", f);
        else if (c == '\t') fputs("\\t", f);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

/* Encodes text (whole, then line by line) n times; prints MB/s. Returns an exit code. */
static int bench(const char *prog, const glm_tokenizer *tok, const char *text, size_t len, int flags, int n) {
    double best = 1e30, first = 0, best_lines = 1e30;
    int ntok = 0;
    for (int r = 0; r < n; r++) {
        int32_t *ids;
        int nid;
        double t0 = tool_now();
        int rc = glm_tokenize(tok, text, len, flags, &ids, &nid);
        double dt = tool_now() - t0;
        if (rc) {
            fprintf(stderr, "%s: error: %s\n", prog, glm_last_error());
            return EXIT_FAIL;
        }
        free(ids);
        if (r == 0) first = dt;
        if (dt < best) best = dt;
        ntok = nid;
    }
    long lines_tok = 0;
    for (int r = 0; r < n; r++) {
        double t0 = tool_now();
        long tot = 0;
        for (size_t i = 0; i < len;) {
            const char *nl = memchr(text + i, '\n', len - i);
            size_t e = nl ? (size_t)(nl - text) + 1 : len;
            int32_t *ids;
            int nid;
            if (glm_tokenize(tok, text + i, e - i, flags, &ids, &nid)) {
                fprintf(stderr, "%s: error: %s\n", prog, glm_last_error());
                return EXIT_FAIL;
            }
            free(ids);
            tot += nid;
            i = e;
        }
        double dt = tool_now() - t0;
        if (dt < best_lines) best_lines = dt;
        lines_tok = tot;
    }
    double mb = (double)len / 1e6;
    printf("bytes %zu, tokens %d (whole), %ld (lines)\n", len, ntok, lines_tok);
    printf("whole text: first %.1f MB/s, best of %d %.1f MB/s\n", mb / first, n, mb / best);
    printf("line by line: best of %d %.1f MB/s\n", n, mb / best_lines);
    return EXIT_OK;
}

/* Returns the exit status: 0, 1 on a failure (named on stderr), 2 on a usage error. */
int main(int argc, char **argv) {
    const char *prog = "glm-tokenize";
    const char *model = NULL, *tok_file = NULL, *prompt = NULL, *file = NULL;
    int only_ids = 0, show_count = 0, parse_special = 1, add_special = 0, decode = 0, json = 0, n_bench = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return EXIT_OK; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) model = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "--tokenizer")) tok_file = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) prompt = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) file = tool_arg(argc, argv, &i);
        else if (!strcmp(a, "--ids")) only_ids = 1;
        else if (!strcmp(a, "--show-count")) show_count = 1;
        else if (!strcmp(a, "--no-parse-special")) parse_special = 0;
        else if (!strcmp(a, "--add-special")) add_special = 1;
        else if (!strcmp(a, "--decode")) decode = 1;
        else if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "--bench")) n_bench = tool_int("--bench", tool_arg(argc, argv, &i), 1, 100000);
        else {
            fprintf(stderr, "%s: error: unknown argument '%s' (see --help)\n", prog, a);
            return EXIT_USAGE;
        }
    }
    if (model && tok_file) {
        fprintf(stderr, "%s: error: give -m or --tokenizer, not both\n", prog);
        return EXIT_USAGE;
    }
    if (prompt && file) {
        fprintf(stderr, "%s: error: give -p or -f, not both\n", prog);
        return EXIT_USAGE;
    }
    glm_tokenizer *tok = NULL;
    int rc = tok_file ? glm_tokenizer_load(tok_file, &tok) : glm_tokenizer_load_dir(model ? model : tool_default_model(), &tok);
    if (rc) {
        fprintf(stderr, "%s: error: %s\n", prog, glm_last_error());
        return EXIT_FAIL;
    }
    char *owned = NULL;
    const char *text = prompt;
    size_t len = prompt ? strlen(prompt) : 0;
    if (!prompt) {
        if ((!file || !strcmp(file, "-")) && isatty(STDIN_FILENO))
            fprintf(stderr, "%s: reading %s from stdin (Ctrl-D to end)\n", prog, decode ? "ids" : "text");
        owned = tool_read_text(prog, file ? file : "-", &len);
        if (!owned) {
            glm_tokenizer_free(tok);
            return EXIT_FAIL;
        }
        text = owned;
    }
    int status = EXIT_OK;
    int flags = (parse_special ? GLM_TOK_PARSE_SPECIAL : 0) | (add_special ? GLM_TOK_ADD_SPECIAL : 0);
    if (n_bench) {
        status = bench(prog, tok, text, len, flags, n_bench);
        goto done;
    }
    if (decode) {
        int32_t *ids = NULL;
        int n = 0;
        char err[256], *out = NULL;
        size_t olen = 0;
        if (tool_parse_ids(text, &ids, &n, err, sizeof err)) {
            fprintf(stderr, "%s: error: %s: %s\n", prog, prompt ? "-p" : file ? file : "stdin", err);
            status = EXIT_USAGE;
            goto done;
        }
        rc = glm_detokenize(tok, ids, n, 0, &out, &olen);
        if (rc) {
            /* an id outside the vocabulary is a bad argument; anything else a failure */
            fprintf(stderr, "%s: error: %s: %s\n", prog, prompt ? "-p" : file ? file : "stdin", glm_last_error());
            free(ids);
            status = rc == GLM_ERR_ARG ? EXIT_USAGE : EXIT_FAIL;
            goto done;
        }
        if (json) {
            fputs("{\"text\": ", stdout);
            json_str(stdout, out, olen);
            fputs("}\n", stdout);
        } else {
            fwrite(out, 1, olen, stdout);
            if (olen && out[olen - 1] != '\n') fputc('\n', stdout);
        }
        free(out);
        free(ids);
        goto done;
    }
    int32_t *ids = NULL;
    int n = 0;
    if (glm_tokenize(tok, text, len, flags, &ids, &n)) {
        fprintf(stderr, "%s: error: %s: %s\n", prog, prompt ? "-p" : file ? file : "stdin", glm_last_error());
        status = EXIT_FAIL;
        goto done;
    }
    if (json) {
        fputs("{\"ids\": [", stdout);
        for (int i = 0; i < n; i++) printf("%s%d", i ? ", " : "", ids[i]);
        fputs("], \"tokens\": [", stdout);
        for (int i = 0; i < n; i++) {
            const char *t = glm_token_text(tok, ids[i]);
            if (i) fputs(", ", stdout);
            if (t) json_str(stdout, t, strlen(t));
            else fputs("null", stdout);  /* the loader refuses templates with such ids */
        }
        printf("], \"count\": %d}\n", n);
    } else if (only_ids) {
        fputc('[', stdout);
        for (int i = 0; i < n; i++) printf("%s%d", i ? ", " : "", ids[i]);
        fputs("]\n", stdout);
    } else {
        for (int i = 0; i < n; i++) {
            size_t pl;
            const char *p = glm_token_piece(tok, ids[i], &pl);
            printf("%6d -> '", ids[i]);
            fwrite(p, 1, pl, stdout);
            fputs("'\n", stdout);
        }
    }
    if (show_count && !json) printf("Total number of tokens: %d\n", n);
    free(ids);
done:
    free(owned);
    glm_tokenizer_free(tok);
    return status;
}
