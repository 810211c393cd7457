/* test-server.c - glm-server on loopback ports with glm-tiny: the endpoints through a
 * small HTTP client here (streams de-chunked, SSE events parsed); 32 concurrent greedy
 * requests each equal to the same request alone, KV usage back to 0; a tiny KV cache
 * that preempts and still gives the same answers; the prefix cache seen in /metrics; the
 * bad-input matrix (status, OpenAI error object, the server still up); clients that
 * disconnect mid-stream cancel their requests; a full queue answers 429; the API key;
 * SIGTERM stops the server with exit 0; the official OpenAI npm client
 * (tests/server/openai-client.mjs; installed with npm ci into the build folder); and
 * glm-bench --serve, which runs the same scheduler, with its report. */
#include "glm.h"
#include "json.h"
#include "test.h"
#include "tool-run.h"
#include "../tools/server-body.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- a server process ---- */
typedef struct {
    pid_t pid;
    int port;
    char log[300];
} server;

/* Starts glm-server on a free port with args; returns 0 once it listens. */
static int server_start(server *s, const char *args) {
    static int n;
    snprintf(s->log, sizeof s->log, "%s/server-%d.log", test_tmp, n++);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "exec %s/glm-server --port 0 -t 1 %s >/dev/null 2>%s", tool_bin(), args, s->log);
    s->pid = fork();
    if (s->pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    for (double t0 = now_s(); now_s() - t0 < 20;) {
        char *log = slurp(s->log, NULL);
        const char *at = log ? strstr(log, "listening on http://127.0.0.1:") : NULL;
        if (at) {
            s->port = atoi(at + strlen("listening on http://127.0.0.1:"));
            free(log);
            return 0;
        }
        free(log);
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            char *l = slurp(s->log, NULL);
            fprintf(stderr, "  glm-server %s exited: %s\n", args, l ? l : "");
            free(l);
            s->pid = 0;
            return -1;
        }
        usleep(20000);
    }
    return -1;
}

/* Sends SIGTERM and waits up to 10 s; returns the exit status (-1: had to be killed). */
static int server_stop(server *s) {
    if (s->pid <= 0) return -1;
    kill(s->pid, SIGTERM);
    for (double t0 = now_s(); now_s() - t0 < 10; usleep(10000)) {
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            s->pid = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
    return -1;
}

/* ---- HTTP ---- */

/* A connected socket to the port, with 30 s send and receive timeouts; -1 on failure. */
static int dial(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) { close(fd); return -1; }
    return fd;
}

/* Writes a request; body may be NULL. */
static int send_request(int fd, const char *method, const char *path, const char *headers, const char *body) {
    char head[1024];
    size_t bl = body ? strlen(body) : 0;
    int n = snprintf(head, sizeof head, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s%s", method, path,
                     headers ? headers : "", body ? "Content-Type: application/json\r\n" : "");
    if (body) n += snprintf(head + n, sizeof head - (size_t)n, "Content-Length: %zu\r\n", bl);
    n += snprintf(head + n, sizeof head - (size_t)n, "\r\n");
    if (write(fd, head, (size_t)n) != n) return -1;
    for (size_t off = 0; off < bl;) {
        ssize_t w = write(fd, body + off, bl - off);
        if (w <= 0) return -1;
        off += (size_t)w;
    }
    return 0;
}

typedef struct {
    int status;
    char *body;   /* de-chunked */
} response;

/* Decodes a chunked body in place; returns its length. */
static size_t dechunk(char *s, size_t n) {
    size_t in = 0, out = 0;
    while (in < n) {
        char *end;
        unsigned long len = strtoul(s + in, &end, 16);
        char *crlf = strstr(s + in, "\r\n");
        if (!crlf || end == s + in) break;
        in = (size_t)(crlf - s) + 2;
        if (len == 0 || in + len > n) break;
        memmove(s + out, s + in, len);
        out += len;
        in += len + 2;
    }
    s[out] = 0;
    return out;
}

/* Reads a whole response until the server closes. */
static int read_response(int fd, response *r) {
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    ssize_t got;
    while ((got = read(fd, buf + n, cap - n)) > 0) {
        n += (size_t)got;
        if (n == cap) { cap *= 2; buf = realloc(buf, cap + 1); }
    }
    buf[n] = 0;
    r->status = 0;
    r->body = NULL;
    char *sep = strstr(buf, "\r\n\r\n");
    if (strncmp(buf, "HTTP/1.", 7) || !sep) { free(buf); return -1; }
    r->status = atoi(buf + 9);
    *sep = 0;
    int chunked = strcasestr(buf, "Transfer-Encoding: chunked") != NULL;
    size_t bl = n - (size_t)(sep + 4 - buf);
    r->body = malloc(bl + 1);
    memcpy(r->body, sep + 4, bl);
    r->body[bl] = 0;
    if (chunked) dechunk(r->body, bl);
    free(buf);
    return 0;
}

/* One request and its whole response; status 0 when the exchange failed. */
static response http(int port, const char *method, const char *path, const char *headers, const char *body) {
    response r = {0, NULL};
    int fd = dial(port);
    if (fd < 0) return r;
    if (!send_request(fd, method, path, headers, body)) read_response(fd, &r);
    close(fd);
    if (!r.body) r.body = calloc(1, 1);
    return r;
}

/* A metric's value from /metrics (the first line starting with name and a space); NAN if absent. */
static double metric(int port, const char *name) {
    response r = http(port, "GET", "/metrics", NULL, NULL);
    double v = NAN;
    size_t l = strlen(name);
    for (char *p = r.body; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (!strncmp(p, name, l) && p[l] == ' ') { v = atof(p + l + 1); break; }
    free(r.body);
    return v;
}

/* The generated text of a completion response: choices[0].text or .message.content
 * (malloc'd), or NULL when the body is not one. */
static char *answer_text(const char *body, int *n_tokens, char *finish, size_t fcap) {
    char err[160];
    json_doc *d = json_parse(body, strlen(body), err, sizeof err);
    if (!d) return NULL;
    const json_value *ch = json_get(json_root(d), "choices");
    char *out = NULL;
    if (ch && ch->type == JSON_ARRAY && ch->u.arr.n == 1) {
        const json_value *c0 = &ch->u.arr.items[0], *m = json_get(c0, "message");
        const char *t = m ? json_get_str(m, "content") : json_get_str(c0, "text");
        if (t) out = strdup(t);
        const char *f = json_get_str(c0, "finish_reason");
        if (finish) snprintf(finish, fcap, "%s", f ? f : "");
    }
    double nt = -1;
    const json_value *u = json_get(json_root(d), "usage");
    if (n_tokens) *n_tokens = u && json_get_num(u, "completion_tokens", &nt) ? (int)nt : -1;
    json_free(d);
    return out;
}

/* The text of an SSE stream of completion chunks (malloc'd); *done set when it ended
 * with "data: [DONE]". */
static char *stream_text(const char *body, int *done) {
    size_t cap = strlen(body) + 1, n = 0;
    char *out = calloc(1, cap);
    *done = 0;
    for (const char *p = body; p && *p;) {
        const char *e = strstr(p, "\n\n");
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (!strncmp(p, "data: [DONE]", 12)) *done = 1;
        else if (!strncmp(p, "data: ", 6)) {
            char err[160];
            json_doc *d = json_parse(p + 6, len - 6, err, sizeof err);
            const json_value *ch = d ? json_get(json_root(d), "choices") : NULL;
            if (ch && ch->type == JSON_ARRAY && ch->u.arr.n == 1) {
                const json_value *c0 = &ch->u.arr.items[0], *dl = json_get(c0, "delta");
                const char *t = dl ? json_get_str(dl, "content") : json_get_str(c0, "text");
                if (t) { size_t tl = strlen(t); memcpy(out + n, t, tl); n += tl; }
            }
            json_free(d);
        }
        p = e ? e + 2 : NULL;
    }
    return out;
}

/* ---- the tests ---- */

/* Splits text as a chat answer fed in two pieces cut at every point; checks each split
 * gives reason and content. */
static void check_think(int open, const char *text, const char *reason, const char *content) {
    const size_t n = strlen(text);
    for (size_t cut = 0; cut <= n; cut++) {
        think_split t = {open, {0}, 0};
        sbuf r = {0}, c = {0};
        think_feed(&t, text, cut, 0, &r, &c);
        think_feed(&t, text + cut, n - cut, 1, &r, &c);
        CHECK_MSG(!strcmp(r.s ? r.s : "", reason) && !strcmp(c.s ? c.s : "", content),
                  "'%s' cut at %zu (open %d): reasoning '%s' content '%s'", text, cut, open, r.s ? r.s : "", c.s ? c.s : "");
        sb_free(&r);
        sb_free(&c);
    }
}

TEST(reasoning_content_split) {
    check_think(1, "plan</think>answer", "plan", "answer");             /* GLM-4.7: the prompt opened <think> */
    check_think(0, "\n<think>plan</think>answer", "plan", "answer");    /* GLM-4.5: the answer opens it */
    check_think(0, "just an answer", "", "just an answer");
    check_think(0, "\n\nno tag", "", "\n\nno tag");
    check_think(0, "<thin", "", "<thin");                                /* a cut-off tag is content */
    check_think(1, "never closed </thi", "never closed </thi", "");      /* reasoning cut by max_tokens */
    check_think(1, "a</think>b</think>c", "a", "b</think>c");
    check_think(0, "answer <think>not at the start</think>", "", "answer <think>not at the start</think>");
}

static server main_srv;

/* Stops the main server when the tests end (whichever ran). */
static void stop_main(void) {
    if (main_srv.pid > 0) server_stop(&main_srv);
}

/* The main server: 8 slots, steps of 64 tokens (prompts chunked and mixed with decoding). */
static int up(void) {
    if (main_srv.pid > 0) return 1;
    if (server_start(&main_srv, "-np 8 --batch-tokens 64 -c 1024 --max-body 65536")) { CHECK_MSG(0, "glm-server did not start"); return 0; }
    atexit(stop_main);
    return 1;
}

/* A greedy completion body for prompt ids made from a seed. */
static void greedy_body(char *buf, size_t cap, int seed, int n_prompt, int max_tokens, int stream) {
    int n = snprintf(buf, cap, "{\"prompt\":[");
    uint64_t x = (uint64_t)seed * 0x9e3779b97f4a7c15ull + 1;
    for (int i = 0; i < n_prompt; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        n += snprintf(buf + n, cap - (size_t)n, "%s%d", i ? "," : "", (int)(x % 8000));
    }
    snprintf(buf + n, cap - (size_t)n, "],\"max_tokens\":%d,\"temperature\":0,\"ignore_eos\":true%s}", max_tokens,
             stream ? ",\"stream\":true" : "");
}

/* The "id" of a response body (malloc'd), or NULL. */
static char *response_id(const char *body) {
    char err[160];
    json_doc *d = json_parse(body, strlen(body), err, sizeof err);
    const char *id = d ? json_get_str(json_root(d), "id") : NULL;
    char *out = id ? strdup(id) : NULL;
    json_free(d);
    return out;
}

TEST(response_ids_unique_across_starts) {
    /* two fresh servers (a restart) and two requests on one: four different ids */
    char *ids[4] = {0};
    for (int k = 0; k < 2; k++) {
        server sv;
        if (server_start(&sv, "-np 1 -c 256")) { CHECK_MSG(0, "glm-server did not start"); break; }
        for (int i = 0; i < 2; i++) {
            response r = http(sv.port, "POST", "/v1/completions", NULL, "{\"prompt\":\"Hi\",\"max_tokens\":1,\"temperature\":0}");
            ids[2 * k + i] = response_id(r.body);
            CHECK_MSG(r.status == 200 && ids[2 * k + i] && !strncmp(ids[2 * k + i], "cmpl-", 5), "%d %s", r.status, r.body);
            free(r.body);
        }
        CHECK(server_stop(&sv) == 0);
    }
    for (int a = 0; a < 4; a++)
        for (int b = a + 1; b < 4; b++)
            CHECK_MSG(ids[a] && ids[b] && strcmp(ids[a], ids[b]), "id %d '%s' = id %d '%s'", a, ids[a] ? ids[a] : "", b, ids[b] ? ids[b] : "");
    for (int a = 0; a < 4; a++) free(ids[a]);
}

TEST(endpoints_answer) {
    if (!up()) return;
    int p = main_srv.port;
    response r = http(p, "GET", "/health", NULL, NULL);
    CHECK_MSG(r.status == 200 && strstr(r.body, "\"ok\""), "%d %s", r.status, r.body);
    free(r.body);
    r = http(p, "GET", "/v1/models", NULL, NULL);
    CHECK_MSG(r.status == 200 && strstr(r.body, "\"id\":\"glm-tiny\""), "%d %s", r.status, r.body);
    free(r.body);
    r = http(p, "POST", "/v1/completions", NULL, "{\"prompt\":\"Hello there\",\"max_tokens\":12,\"temperature\":0,\"ignore_eos\":true}");
    int nt = 0;
    char fin[32];
    char *text = answer_text(r.body, &nt, fin, sizeof fin);
    CHECK_MSG(r.status == 200 && text && nt == 12 && !strcmp(fin, "length"), "%d %s", r.status, r.body);
    /* the same text as glm-run greedy */
    tool_result t;
    run_tool(&t, "%s/glm-run -t 1 -p 'Hello there' -n 12 --temp 0 --ignore-eos 2>/dev/null", tool_bin());
    CHECK_MSG(text && t.status == 0 && !strncmp(t.out, text, strlen(text)), "server '%s' glm-run '%s'", text ? text : "", t.out);
    tool_result_free(&t);
    /* streamed: the same text, ending with [DONE] */
    response s = http(p, "POST", "/v1/completions", NULL,
                      "{\"prompt\":\"Hello there\",\"max_tokens\":12,\"temperature\":0,\"ignore_eos\":true,\"stream\":true}");
    int done;
    char *st = stream_text(s.body, &done);
    CHECK_MSG(s.status == 200 && done && text && !strcmp(st, text), "stream '%s' vs '%s'", st, text ? text : "");
    free(st); free(s.body); free(text); free(r.body);
    /* chat, whole and streamed */
    const char *chat = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":8,\"temperature\":0,\"ignore_eos\":true%s}";
    char b1[256], b2[256];
    snprintf(b1, sizeof b1, chat, "");
    snprintf(b2, sizeof b2, chat, ",\"stream\":true");
    r = http(p, "POST", "/v1/chat/completions", NULL, b1);
    s = http(p, "POST", "/v1/chat/completions", NULL, b2);
    text = answer_text(r.body, &nt, NULL, 0);
    st = stream_text(s.body, &done);
    CHECK_MSG(r.status == 200 && text && nt == 8 && strstr(r.body, "\"object\":\"chat.completion\""), "%s", r.body);
    CHECK_MSG(s.status == 200 && done && text && !strcmp(st, text), "chat stream '%s' vs '%s'", st, text ? text : "");
    free(st); free(s.body); free(text); free(r.body);
}

typedef struct {
    int port, seed, n_prompt, max_tokens;
    char *text;
    int n_tokens;
} conc_req;

static void *conc_run(void *arg) {
    conc_req *q = arg;
    char body[4096];
    greedy_body(body, sizeof body, q->seed, q->n_prompt, q->max_tokens, 0);
    response r = http(q->port, "POST", "/v1/completions", NULL, body);
    q->text = r.status == 200 ? answer_text(r.body, &q->n_tokens, NULL, 0) : NULL;
    if (r.status != 200) fprintf(stderr, "  request %d: %d %s\n", q->seed, r.status, r.body);
    free(r.body);
    return NULL;
}

/* Runs the n requests at once (a thread each). */
static void run_concurrent(conc_req *q, int n) {
    pthread_t th[64];
    for (int i = 0; i < n; i++) pthread_create(&th[i], NULL, conc_run, &q[i]);
    for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
}

/* Waits up to secs for no request running or waiting and no KV page held; returns 1 then. */
static int drained(int port, double secs) {
    for (double t0 = now_s(); now_s() - t0 < secs; usleep(20000))
        if (metric(port, "glm_requests_running") == 0 && metric(port, "glm_requests_waiting") == 0 &&
            metric(port, "glm_kv_usage_ratio") == 0)
            return 1;
    return 0;
}

static conc_req alone[32];

TEST(concurrent_requests_equal_each_alone) {
    if (!up()) return;
    conc_req together[32];
    for (int i = 0; i < 32; i++) {
        alone[i] = (conc_req){main_srv.port, 200 + i, 3 + (i * 37) % 120, 2 + (i * 11) % 30, NULL, 0};
        conc_run(&alone[i]);
        together[i] = alone[i];
        together[i].text = NULL;
    }
    run_concurrent(together, 32);
    for (int i = 0; i < 32; i++) {
        CHECK_MSG(alone[i].text && together[i].text && !strcmp(alone[i].text, together[i].text) &&
                  together[i].n_tokens == alone[i].max_tokens, "request %d: '%s' together, '%s' alone", i,
                  together[i].text ? together[i].text : "(failed)", alone[i].text ? alone[i].text : "(failed)");
        free(together[i].text);
    }
    CHECK_MSG(drained(main_srv.port, 5), "requests or KV pages left after the run");
}

static void expect_error(int port, const char *method, const char *path, const char *headers, const char *body, int status,
                         const char *param, const char *code);

/* A streaming request's thread: the whole stream, then its text and whether it ended. */
typedef struct {
    int port, seed, done, status;
    char *text;
} stream_req;

static void *stream_run(void *arg) {
    stream_req *q = arg;
    char body[4096];
    greedy_body(body, sizeof body, q->seed, 8, 12, 1);
    response r = http(q->port, "POST", "/v1/completions", NULL, body);
    q->status = r.status;
    q->text = r.status == 200 ? stream_text(r.body, &q->done) : NULL;
    free(r.body);
    return NULL;
}

/* Bursts of 64 streams at once, as many as the server decodes together: every stream
 * ends with text, nothing is left running, and the server answers after. A load test of
 * the engine's hand-over of each step's wake-ups to the notifier thread (under ASan in
 * the sanitizer build). */
TEST(bursts_of_streams) {
    server sb;
    if (server_start(&sb, "-np 64 --batch-tokens 256 -c 256")) { CHECK_MSG(0, "glm-server -np 64 did not start"); return; }
    stream_req q[64];
    for (int burst = 0; burst < 3; burst++) {
        pthread_t th[64];
        for (int i = 0; i < 64; i++) {
            q[i] = (stream_req){sb.port, 900 + burst * 64 + i, 0, 0, NULL};
            pthread_create(&th[i], NULL, stream_run, &q[i]);
        }
        int ok = 0;
        for (int i = 0; i < 64; i++) {
            pthread_join(th[i], NULL);
            ok += q[i].status == 200 && q[i].done && q[i].text && q[i].text[0];
            free(q[i].text);
        }
        CHECK_MSG(ok == 64, "burst %d: %d of 64 streams ended with text", burst, ok);
    }
    CHECK_MSG(drained(sb.port, 10), "requests or KV pages left after the bursts");
    response h = http(sb.port, "GET", "/health", NULL, NULL);
    CHECK_MSG(h.status == 200, "/health after the bursts: %d", h.status);
    free(h.body);
    CHECK(server_stop(&sb) == 0);
}

TEST(preemption_gives_the_same_answers) {
    if (!up()) return;
    server small;
    /* 14 pages for 8 requests that end holding 4 or 5 each */
    if (server_start(&small, "-np 8 --kv-pages 14 -c 256")) { CHECK(0); return; }
    conc_req q[8], ref[8];
    for (int i = 0; i < 8; i++) {
        q[i] = (conc_req){small.port, 300 + i, 20 + 3 * i, 40, NULL, 0};
        ref[i] = q[i];
        ref[i].port = main_srv.port;
        conc_run(&ref[i]);
    }
    run_concurrent(q, 8);
    for (int i = 0; i < 8; i++) {
        CHECK_MSG(q[i].text && ref[i].text && !strcmp(q[i].text, ref[i].text), "request %d differs after preemption", i);
        free(q[i].text);
        free(ref[i].text);
    }
    CHECK_MSG(metric(small.port, "glm_preemptions_total") > 0, "no preemption with 14 pages");
    /* without max_tokens a request may fill the 14 pages (224 tokens), not the 256 of -c */
    response r = http(small.port, "POST", "/v1/completions", NULL, "{\"prompt\": [1, 2, 3], \"ignore_eos\": true}");
    int nt = 0;
    char *text = answer_text(r.body, &nt, NULL, 0);
    CHECK_MSG(r.status == 200 && nt == 224 - 3, "%d: %d tokens", r.status, nt);
    free(text);
    free(r.body);
    expect_error(small.port, "POST", "/v1/completions", NULL, "{\"prompt\": [1, 2, 3], \"max_tokens\": 222}", 400, "max_tokens",
                 "context_length_exceeded");
    CHECK(drained(small.port, 5));
    CHECK(server_stop(&small) == 0);
}

TEST(prefix_cache_in_metrics) {
    if (!up()) return;
    int p = main_srv.port;
    char a[4096], b[4096];
    greedy_body(a, sizeof a, 999, 40, 4, 0);
    greedy_body(b, sizeof b, 999, 50, 4, 0);  /* the same first 40 tokens, then 10 more */
    response r = http(p, "POST", "/v1/completions", NULL, a);
    CHECK(r.status == 200);
    free(r.body);
    CHECK(drained(p, 3));  /* the metrics are updated after the step that answered */
    const double cached0 = metric(p, "glm_prompt_tokens_cached_total"), fed0 = metric(p, "glm_computed_tokens_total");
    const double ttft0 = metric(p, "glm_time_to_first_token_seconds_count"), itl0 = metric(p, "glm_inter_token_latency_seconds_count");
    const double gen0 = metric(p, "glm_generation_tokens_total"), prompt0 = metric(p, "glm_prompt_tokens_total");
    r = http(p, "POST", "/v1/completions", NULL, b);
    CHECK(r.status == 200 && strstr(r.body, "\"cached_tokens\":32"));
    free(r.body);
    CHECK(drained(p, 3));
    const double cached1 = metric(p, "glm_prompt_tokens_cached_total"), fed1 = metric(p, "glm_computed_tokens_total");
    CHECK_MSG(cached1 - cached0 == 32, "%g cached tokens", cached1 - cached0);
    CHECK_MSG(fed1 - fed0 == 50 - 32 + 3, "%g tokens fed for a 50-token prompt with 32 cached", fed1 - fed0);
    /* one first token and 3 gaps, 4 tokens generated, 50 prompt tokens */
    CHECK(metric(p, "glm_time_to_first_token_seconds_count") - ttft0 == 1);
    CHECK(metric(p, "glm_inter_token_latency_seconds_count") - itl0 == 3);
    CHECK(metric(p, "glm_generation_tokens_total") - gen0 == 4);
    CHECK(metric(p, "glm_prompt_tokens_total") - prompt0 == 50);
    CHECK(metric(p, "glm_time_to_first_token_seconds_bucket{le=\"+Inf\"}") == metric(p, "glm_time_to_first_token_seconds_count"));
    const double ratio = metric(p, "glm_prefix_cache_hit_ratio");
    CHECK(ratio > 0 && ratio < 1);
}

/* Checks one bad request: its status, an OpenAI error object, and the field or code. */
static void expect_error(int port, const char *method, const char *path, const char *headers, const char *body, int status,
                         const char *param, const char *code) {
    response r = http(port, method, path, headers, body);
    char err[160];
    json_doc *d = json_parse(r.body, strlen(r.body), err, sizeof err);
    const json_value *e = d ? json_get(json_root(d), "error") : NULL;
    const int shape = e && json_get_str(e, "message") && json_get_str(e, "type") && json_get(e, "param") && json_get(e, "code");
    const char *pp = e ? json_get_str(e, "param") : NULL, *cc = e ? json_get_str(e, "code") : NULL;
    CHECK_MSG(r.status == status && shape && (!param || (pp && !strcmp(pp, param))) && (!code || (cc && !strcmp(cc, code))),
              "%s %s %.80s: %d %s (want %d, param %s, code %s)", method, path, body ? body : "", r.status, r.body, status,
              param ? param : "-", code ? code : "-");
    json_free(d);
    free(r.body);
}

TEST(bad_input_matrix) {
    if (!up()) return;
    const int p = main_srv.port;
    const char *C = "/v1/completions", *CH = "/v1/chat/completions";
    expect_error(p, "POST", C, NULL, "{\"prompt\": \"x\",", 400, NULL, NULL);
    expect_error(p, "POST", C, NULL, "", 400, NULL, NULL);
    expect_error(p, "POST", C, NULL, "[1, 2]", 400, NULL, NULL);
    expect_error(p, "POST", C, NULL, "{\"max_tokens\": 3}", 400, "prompt", NULL);
    expect_error(p, "POST", C, NULL, "{\"prompt\": 5}", 400, "prompt", NULL);
    expect_error(p, "POST", C, NULL, "{\"prompt\": \"x\", \"max_tokens\": \"5\"}", 400, "max_tokens", NULL);
    expect_error(p, "POST", C, NULL, "{\"prompt\": \"x\", \"max_tokens\": 2.5}", 400, "max_tokens", NULL);
    expect_error(p, "POST", C, NULL, "{\"prompt\": \"x\", \"max_tokens\": 0}", 400, "max_tokens", NULL);
    expect_error(p, "POST", C, NULL, "{\"prompt\": \"x\", \"temperature\": 7}", 400, "temperature", NULL);
    expect_error(p, "POST", C, NULL, "{\"prompt\": \"x\", \"top_p\": \"high\"}", 400, "top_p", NULL);
    expect_error(p, "POST", C, NULL, "{\"prompt\": \"x\", \"stream\": \"yes\"}", 400, "stream", NULL);
    expect_error(p, "POST", C, NULL, "{\"prompt\": \"x\", \"stop\": [1]}", 400, "stop", NULL);
    expect_error(p, "POST", C, NULL, "{\"prompt\": \"x\", \"seed\": 1e300}", 400, "seed", NULL);
    expect_error(p, "POST", C, NULL, "{\"prompt\": \"x\", \"n\": 2}", 400, "n", NULL);
    expect_error(p, "POST", C, NULL, "{\"prompt\": \"x\", \"max_tokens\": 5000}", 400, "max_tokens", "context_length_exceeded");
    expect_error(p, "POST", C, NULL, "{\"prompt\": [1, 2, 99999]}", 400, NULL, NULL);
    expect_error(p, "POST", C, NULL, "{\"prompt\": \"\\ud800\"}", 400, NULL, NULL);
    expect_error(p, "POST", C, NULL, "{\"prompt\": \"x\", \"model\": \"gpt-4\"}", 404, "model", "model_not_found");
    expect_error(p, "POST", CH, NULL, "{\"messages\": \"hi\"}", 400, "messages", NULL);
    expect_error(p, "POST", CH, NULL, "{\"messages\": []}", 400, "messages", NULL);
    expect_error(p, "POST", CH, NULL, "{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}", 400, "messages", NULL);
    expect_error(p, "POST", CH, NULL, "{\"messages\": [{\"role\": \"user\", \"content\": 3}]}", 400, "messages", NULL);
    expect_error(p, "POST", CH, NULL, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"chat_template_kwargs\": 1}", 400,
                 "chat_template_kwargs", NULL);
    expect_error(p, "POST", C, NULL, "{\"prompt\": \"x\", \"user\": 5}", 400, "user", NULL);
    expect_error(p, "POST", C, NULL, "{\"prompt\": \"x\", \"logit_bias\": [1]}", 400, "logit_bias", NULL);
    expect_error(p, "POST", C, NULL, "{\"prompt\": \"x\", \"logprobs\": 3}", 400, "logprobs", NULL);
    expect_error(p, "POST", CH, NULL, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": [{}]}", 400, "tools",
                 NULL);
    expect_error(p, "POST", CH, NULL,
                 "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"response_format\": {\"type\": \"json_object\"}}",
                 400, "response_format", NULL);
    expect_error(p, "GET", "/v2/nothing", NULL, NULL, 404, NULL, "not_found");
    expect_error(p, "GET", C, NULL, NULL, 405, NULL, NULL);
    /* a body past --max-body 65536 */
    char *big = malloc(70000);
    memset(big, ' ', 69999);
    big[0] = '{';
    memcpy(big + 69990, "\"p\": 1}", 8);
    expect_error(p, "POST", C, NULL, big, 413, NULL, "request_too_large");
    free(big);
    response r = http(p, "GET", "/health", NULL, NULL);
    CHECK_MSG(r.status == 200, "the server is down after the bad input");
    free(r.body);
    CHECK(metric(p, "glm_requests_rejected_total") >= 31);
    /* fields that are accepted: user, a text response_format, logprobs false, an empty tools list */
    response ok = http(p, "POST", CH, NULL,
                       "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": 2, \"user\": \"u1\", "
                       "\"response_format\": {\"type\": \"text\"}, \"logprobs\": false, \"tools\": [], \"repetition_penalty\": 1.1}");
    CHECK_MSG(ok.status == 200, "%d %s", ok.status, ok.body);
    free(ok.body);
}

/* Sends raw request bytes on a new connection and reads the whole response. */
static response raw_exchange(int port, const char *raw, size_t n) {
    response r = {0, NULL};
    int fd = dial(port);
    if (fd >= 0) {
        size_t off = 0;
        while (off < n) {
            ssize_t w = write(fd, raw + off, n - off);
            if (w <= 0) break;
            off += (size_t)w;
        }
        read_response(fd, &r);
        close(fd);
    }
    if (!r.body) r.body = calloc(1, 1);
    return r;
}

TEST(chunked_bodies_and_length_lies) {
    if (!up()) return;
    const int p = main_srv.port;
    const char *head = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                       "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    /* a chunked body within the limit, in pieces: answered */
    const char *body = "{\"prompt\":\"Hello\",\"max_tokens\":2,\"temperature\":0,\"ignore_eos\":true}";
    sbuf b = {0};
    sb_add(&b, head, strlen(head));
    for (size_t off = 0, L = strlen(body); off < L; off += 7) {
        const size_t k = L - off < 7 ? L - off : 7;
        sb_printf(&b, "%zx\r\n", k);
        sb_add(&b, body + off, k);
        sb_printf(&b, "\r\n");
    }
    sb_printf(&b, "0\r\n\r\n");
    response r = raw_exchange(p, b.s, b.n);
    int nt = 0;
    char *text = answer_text(r.body, &nt, NULL, 0);
    CHECK_MSG(r.status == 200 && text && nt == 2, "chunked: %d %s", r.status, r.body);
    free(text);
    free(r.body);
    sb_free(&b);
    /* a chunked body past --max-body 65536 without a Content-Length, in 4 KB chunks: 413 */
    sb_add(&b, head, strlen(head));
    char chunk[4096];
    memset(chunk, ' ', sizeof chunk);
    for (int i = 0; i < 20; i++) {
        sb_printf(&b, "%zx\r\n", sizeof chunk);
        sb_add(&b, chunk, sizeof chunk);
        sb_printf(&b, "\r\n");
    }
    sb_printf(&b, "0\r\n\r\n");
    r = raw_exchange(p, b.s, b.n);
    CHECK_MSG(r.status == 413 && strstr(r.body, "request_too_large"), "chunked past the limit: %d %s", r.status, r.body);
    free(r.body);
    sb_free(&b);
    /* a Content-Length shorter than the body: the body is cut there (malformed JSON, 400) */
    const char *cut = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 10\r\n\r\n"
                      "{\"prompt\":\"Hello\",\"max_tokens\":2}";
    r = raw_exchange(p, cut, strlen(cut));
    CHECK_MSG(r.status == 400 && strstr(r.body, "malformed JSON"), "short Content-Length: %d %s", r.status, r.body);
    free(r.body);
    response h = http(p, "GET", "/health", NULL, NULL);
    CHECK(h.status == 200);
    free(h.body);
}

TEST(api_key) {
    server s;
    if (server_start(&s, "--api-key sekrit")) { CHECK(0); return; }
    expect_error(s.port, "GET", "/v1/models", NULL, NULL, 401, NULL, "invalid_api_key");
    expect_error(s.port, "GET", "/v1/models", "Authorization: Bearer wrong\r\n", NULL, 401, NULL, "invalid_api_key");
    expect_error(s.port, "POST", "/v1/completions", NULL, "{\"prompt\": \"x\"}", 401, NULL, "invalid_api_key");
    response r = http(s.port, "GET", "/v1/models", "Authorization: Bearer sekrit\r\n", NULL);
    CHECK(r.status == 200);
    free(r.body);
    r = http(s.port, "GET", "/health", NULL, NULL);
    CHECK(r.status == 200);
    free(r.body);
    CHECK(server_stop(&s) == 0);
}

/* Opens a long greedy stream and returns its socket after reading until `events` SSE
 * events arrived (0: none read). */
static int open_stream(int port, int seed, int events) {
    char body[4096];
    greedy_body(body, sizeof body, seed, 10, 1000, 1);
    int fd = dial(port);
    if (fd < 0 || send_request(fd, "POST", "/v1/completions", NULL, body)) return -1;
    int seen = 0;
    char buf[4096];
    while (seen < events) {
        ssize_t n = read(fd, buf, sizeof buf - 1);
        if (n <= 0) break;
        buf[n] = 0;
        for (char *q = buf; (q = strstr(q, "data: ")); q += 6) seen++;
    }
    return fd;
}

TEST(disconnects_cancel_streams) {
    if (!up()) return;
    const int p = main_srv.port;
    const double fail0 = metric(p, "glm_requests_finished_total{outcome=\"cancelled_or_failed\"}");
    srand(7);
    int fds[8];
    for (int i = 0; i < 8; i++) fds[i] = open_stream(p, 400 + i, 1 + rand() % 20);
    for (int i = 0; i < 8; i++) {
        CHECK(fds[i] >= 0);
        if (fds[i] >= 0) close(fds[i]);
    }
    /* a whole (not streamed) answer whose client hangs up while it waits */
    char body[4096];
    greedy_body(body, sizeof body, 450, 10, 1000, 0);
    int w = dial(p);
    CHECK(w >= 0 && !send_request(w, "POST", "/v1/completions", NULL, body));
    usleep(100000);
    close(w);
    /* 9 x 1000 tokens would take many seconds: cancelled, they are gone at once */
    CHECK_MSG(drained(p, 3), "requests still running 3 s after their clients left");
    const double fail1 = metric(p, "glm_requests_finished_total{outcome=\"cancelled_or_failed\"}");
    CHECK_MSG(fail1 - fail0 == 9, "%g requests cancelled", fail1 - fail0);
    response r = http(p, "GET", "/health", NULL, NULL);
    CHECK(r.status == 200);
    free(r.body);
}

TEST(full_queue_answers_429) {
    server s;
    if (server_start(&s, "-np 1 --max-queue 1")) { CHECK(0); return; }
    int a = open_stream(s.port, 500, 1), b = open_stream(s.port, 501, 0);
    usleep(200000);
    expect_error(s.port, "POST", "/v1/completions", NULL, "{\"prompt\": \"x\", \"max_tokens\": 2}", 429, NULL, "queue_full");
    close(a);
    close(b);
    CHECK(drained(s.port, 3));
    response r = http(s.port, "POST", "/v1/completions", NULL, "{\"prompt\": \"x\", \"max_tokens\": 2}");
    CHECK_MSG(r.status == 200, "%d %s", r.status, r.body);
    free(r.body);
    CHECK(server_stop(&s) == 0);
}

TEST(slow_clients_time_out) {
    server s;
    if (server_start(&s, "--timeout 1")) { CHECK(0); return; }
    /* headers that never end, and a body that never comes */
    int a = dial(s.port), b = dial(s.port);
    const char *part = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    const char *head = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"prompt\":";
    CHECK(write(a, part, strlen(part)) == (ssize_t)strlen(part));
    CHECK(write(b, head, strlen(head)) == (ssize_t)strlen(head));
    const double t0 = now_s();
    char buf[256];
    CHECK(read(a, buf, sizeof buf) <= 0);
    CHECK(read(b, buf, sizeof buf) <= 0);
    CHECK_MSG(now_s() - t0 < 5, "silent clients were dropped after %.1f s", now_s() - t0);
    close(a);
    close(b);
    response r = http(s.port, "GET", "/health", NULL, NULL);
    CHECK(r.status == 200);
    free(r.body);
    CHECK(server_stop(&s) == 0);
}

TEST(sigterm_stops_with_streams_open) {
    server s;
    if (server_start(&s, "")) { CHECK(0); return; }
    int fd = open_stream(s.port, 600, 2);
    const double t0 = now_s();
    CHECK(server_stop(&s) == 0);
    CHECK_MSG(now_s() - t0 < 5, "SIGTERM took %.1f s", now_s() - t0);
    /* the stream was ended by the server, with an error event and [DONE]: its last bytes */
    char buf[8192], tail[512] = "";
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf - 1)) > 0) {
        buf[n] = 0;
        const size_t keep = strlen(tail) > 256 ? 256 : strlen(tail);
        char joined[512 + sizeof buf];
        snprintf(joined, sizeof joined, "%s%s", tail + strlen(tail) - keep, buf);
        snprintf(tail, sizeof tail, "%s", joined + (strlen(joined) > 500 ? strlen(joined) - 500 : 0));
    }
    CHECK_MSG(strstr(tail, "data: [DONE]"), "the open stream did not end with [DONE]: ...%s", tail);
    close(fd);
}

TEST(openai_npm_client) {
    if (!up()) return;
    if (system("command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1")) SKIP("node or npm is not installed");
    /* the client, pinned by tests/server/package-lock.json, in the build folder */
    char dir[512], cmd[4096];
    snprintf(dir, sizeof dir, "%s/../tests/server-node", tool_bin());
    snprintf(cmd, sizeof cmd,
             "mkdir -p '%s' && cp tests/server/package.json tests/server/package-lock.json tests/server/openai-client.mjs '%s'/ && "
             "{ [ -f '%s/node_modules/openai/package.json' ] || npm ci --prefix '%s' --no-audit --no-fund >'%s/npm.log' 2>&1 "
             "|| { cat '%s/npm.log' >&2; exit 1; }; }",
             dir, dir, dir, dir, dir, dir);
    CHECK_MSG(system(cmd) == 0, "npm ci of the openai client failed (see above)");
    tool_result t;
    run_tool(&t, "cd '%s' && GLM_SERVER_URL=http://127.0.0.1:%d/v1 GLM_SERVER_MODEL=glm-tiny timeout 60 node openai-client.mjs", dir,
             main_srv.port);
    CHECK_MSG(t.status == 0 && strstr(t.out, "all ok"), "openai client: exit %d\n%s%s", t.status, t.out, t.err);
    tool_result_free(&t);
}

/* A JSON number member of glm-bench's report, or NAN. */
static double report_num(const char *out, const char *key) {
    char err[160];
    json_doc *d = json_parse(out, strlen(out), err, sizeof err);
    double v = NAN;
    if (!d || !json_get_num(json_root(d), key, &v)) v = NAN;
    json_free(d);
    return v;
}

/* The value in column `col` (named in the header line) of the csv row whose test is
 * `test` (the model's name, quoted, comes first); NAN when absent. */
static double csv_field(const char *csv, const char *test, const char *col) {
    const char *nl = strchr(csv, '\n');
    if (!nl) return NAN;
    int idx = -1, k = 0;
    for (const char *p = csv; p < nl; k++) {
        const char *e = memchr(p, ',', (size_t)(nl - p));
        size_t len = e ? (size_t)(e - p) : (size_t)(nl - p);
        if (len == strlen(col) && !memcmp(p, col, len)) idx = k;
        p = e ? e + 1 : nl;
    }
    char key[64];
    snprintf(key, sizeof key, ",%s,", test);
    const char *row = strstr(nl, key);
    if (idx < 0 || !row) return NAN;
    const char *p = row + 1;  /* at column 2, the test (0 is the model, 1 the device) */
    for (k = 2; k < idx && p; k++) p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL;
    return p ? atof(p) : NAN;
}

TEST(bench_serve_reports) {
    tool_result t;
    /* 24 pages for 8 requests of up to 144 tokens: preemptions; a 32-token shared prefix: cache hits */
    int rc = run_tool(&t, "%s/glm-bench --serve --device cpu -t 1 -np 8 --requests 12 --in-dist 16:64 --out-dist 8:48 "
                      "--kv-pages 24 --shared-prefix 32 -o json", tool_bin());
    CHECK_MSG(rc == 0, "exit %d: %s", rc, t.err);
    const char *keys[] = {"req_per_s", "output_tok_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms",
                          "kv_util_mean", "kv_util_peak", "preemptions", "prefix_hit_ratio"};
    for (int i = 0; i < 10; i++) CHECK_MSG(report_num(t.out, keys[i]) >= 0, "%s missing in %s", keys[i], t.out);
    CHECK(report_num(t.out, "req_per_s") > 0 && report_num(t.out, "output_tok_per_s") > 0);
    CHECK(report_num(t.out, "ttft_p99_ms") >= report_num(t.out, "ttft_p50_ms"));
    CHECK(report_num(t.out, "kv_util_peak") > 0.5 && report_num(t.out, "kv_util_peak") <= 1);
    CHECK(report_num(t.out, "kv_util_mean") > 0 && report_num(t.out, "kv_util_mean") <= report_num(t.out, "kv_util_peak"));
    CHECK_MSG(report_num(t.out, "preemptions") > 0, "%s", t.out);
    CHECK(report_num(t.out, "prefix_hit_ratio") > 0 && report_num(t.out, "prefix_hit_ratio") < 1);
    /* where a step's time goes: the forward and the picking are parts of the step; with
     * 12 requests of 16-64 prompt tokens in 512-token steps, at least one step prefills and
     * fewer than all (every output takes 8 steps or more) */
    const double steps = report_num(t.out, "steps"), pre = report_num(t.out, "prefill_steps");
    CHECK_MSG(steps >= 8 && pre >= 1 && pre < steps, "%s", t.out);
    CHECK_MSG(report_num(t.out, "forward_ms") > 0 && report_num(t.out, "sample_ms") > 0 &&
              report_num(t.out, "forward_ms") + report_num(t.out, "sample_ms") <= report_num(t.out, "step_ms") &&
              report_num(t.out, "decode_step_ms") > 0, "%s", t.out);
    tool_result_free(&t);
    /* the fixed-batch tests: the KV column (4 sequences of 16 tokens hold 4 of the 8 pages sized for 18) */
    rc = run_tool(&t, "%s/glm-bench --device cpu -t 1 -p 32 -n 16 -b 4 -r 1 -o csv", tool_bin());
    CHECK_MSG(rc == 0 && csv_field(t.out, "tg16 b4", "kv_peak") == 0.5, "%s", t.out);
    tool_result_free(&t);
    /* requests shorter than the warm-up's 16 + 4 tokens: the warm-up fits the run's context
     * and KV pages (it wrote 16 tokens into a prompt buffer of 2, then was refused) */
    rc = run_tool(&t, "%s/glm-bench --serve --device cpu -t 1 -np 1 --requests 2 --in 1 --out 1 -o json", tool_bin());
    CHECK_MSG(rc == 0 && report_num(t.out, "output_tok_per_s") > 0, "exit %d: %s", rc, t.err);
    tool_result_free(&t);
    rc = run_tool(&t, "%s/glm-bench --serve --device cpu -t 1 -np 1 --requests 2 --in 8 --out 8 --kv-pages 1 -o json", tool_bin());
    CHECK_MSG(rc == 0 && report_num(t.out, "output_tok_per_s") > 0, "exit %d: %s", rc, t.err);
    tool_result_free(&t);
    rc = run_tool(&t, "%s/glm-bench --serve --in-dist 9:3", tool_bin());
    CHECK_MSG(rc == 2 && strstr(t.err, "--in-dist expects LO:HI with LO <= HI"), "%s", t.err);
    tool_result_free(&t);
}

TEST(draft_gives_the_same_greedy_answers) {
    if (!up()) return;
    server sd;
    /* drafting 2 tokens a step, 24 KV pages for 12 requests of up to 10 pages: preemptions */
    if (server_start(&sd, "-np 8 --batch-tokens 64 -c 256 --kv-pages 24 --draft 2")) { CHECK_MSG(0, "glm-server --draft 2 did not start"); return; }
    conc_req q[12], ref[12];
    for (int i = 0; i < 12; i++) {
        ref[i] = (conc_req){main_srv.port, 700 + i, 3 + (i * 37) % 120, 4 + (i * 11) % 30, NULL, 0};
        conc_run(&ref[i]);
        q[i] = ref[i];
        q[i].port = sd.port;
        q[i].text = NULL;
    }
    run_concurrent(q, 12);
    for (int i = 0; i < 12; i++) {
        CHECK_MSG(q[i].text && ref[i].text && !strcmp(q[i].text, ref[i].text) && q[i].n_tokens == ref[i].max_tokens,
                  "request %d: '%s' with --draft 2, '%s' without", i, q[i].text ? q[i].text : "(failed)",
                  ref[i].text ? ref[i].text : "(failed)");
        free(q[i].text);
        free(ref[i].text);
    }
    const double drafted = metric(sd.port, "glm_spec_draft_tokens_total"), accepted = metric(sd.port, "glm_spec_accepted_tokens_total");
    fprintf(stderr, "  glm-server --draft 2: %.0f of %.0f drafted tokens accepted, %.0f preemptions\n", accepted, drafted,
            metric(sd.port, "glm_preemptions_total"));
    CHECK(drafted > 0 && accepted > 0 && accepted <= drafted);
    CHECK(metric(main_srv.port, "glm_spec_draft_tokens_total") == 0);
    CHECK_MSG(drained(sd.port, 5), "requests or KV pages left after the run");
    CHECK(server_stop(&sd) == 0);
    /* glm-bench --serve --draft: the acceptance in the report */
    tool_result t;
    int rc = run_tool(&t, "%s/glm-bench --serve --device cpu -t 1 -np 4 --requests 6 --in-dist 8:32 --out-dist 8:24 --draft 2 -o json",
                      tool_bin());
    CHECK_MSG(rc == 0, "exit %d: %s", rc, t.err);
    CHECK_MSG(report_num(t.out, "draft") == 2 && report_num(t.out, "acceptance") > 0 && report_num(t.out, "acceptance") <= 1 &&
              report_num(t.out, "accepted_tokens") <= report_num(t.out, "draft_tokens"), "%s", t.out);
    tool_result_free(&t);
    rc = run_tool(&t, "%s/glm-bench --serve --device cpu -t 1 -np 2 --requests 2 --in 8 --out 8 --draft 3 -o csv", tool_bin());
    CHECK_MSG(rc == 0 && strstr(t.out, ",prefix_hit_ratio,steps,step_ms,forward_ms,sample_ms,prefill_steps,decode_step_ms,draft,acceptance,"
                                     "draft_tokens,accepted_tokens\n"), "%s%s", t.out, t.err);
    tool_result_free(&t);
    rc = run_tool(&t, "%s/glm-server --draft 2 --no-mtp", tool_bin());
    CHECK_MSG(rc == 2 && strstr(t.err, "needs the MTP layer"), "%s", t.err);
    tool_result_free(&t);
}

TEST(usage_and_startup_errors) {
    if (!up()) return;
    const struct { const char *args; int status; const char *msg; } cases[] = {
        {"--bogus", 2, "glm-server: error: unknown argument '--bogus'"},
        {"--port 70000", 2, "--port expects an integer in [0, 65535]"},
        {"-np 0", 2, "-np expects an integer in [1, 4096]"},
        {"--max-body 1", 2, "--max-body expects an integer in [64,"},
        {"--api-key ''", 2, "--api-key is empty"},
        {"--tp 3", 2, "--tp 3 does not divide the model's 2 KV heads"},
        {"-m tests/data/no-model", 1, "cannot load model"},
        {"--gpus 0,1 -m tests/data/no-model", 1, "cannot load model"},  /* the list freed (make SAN=1: no leak) */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        tool_result t;
        int rc = run_tool(&t, "%s/glm-server --port 0 -t 1 %s", tool_bin(), cases[i].args);
        CHECK_MSG(rc == cases[i].status && strstr(t.err, cases[i].msg) && !strstr(t.err, "LeakSanitizer"),
                  "glm-server %s: exit %d, stderr: %s", cases[i].args, rc, t.err);
        tool_result_free(&t);
    }
    /* the main server's port is taken */
    tool_result t;
    int rc = run_tool(&t, "%s/glm-server -t 1 --port %d", tool_bin(), main_srv.port);
    CHECK_MSG(rc == 1 && strstr(t.err, "cannot listen on 127.0.0.1 port"), "exit %d, stderr: %s", rc, t.err);
    tool_result_free(&t);
    rc = run_tool(&t, "%s/glm-server --help", tool_bin());
    CHECK(rc == 0 && strstr(t.out, "--api-key KEY"));
    tool_result_free(&t);
}

TEST(zz_server_stops_cleanly) {
    if (main_srv.pid <= 0) return;
    CHECK(drained(main_srv.port, 5));
    CHECK(server_stop(&main_srv) == 0);
    for (int i = 0; i < 32; i++) free(alone[i].text);
}

RUN_TESTS_IN_TMP("glm-test-server")
