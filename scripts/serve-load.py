#!/usr/bin/env python3
"""serve-load.py - a load generator for glm-server (Python standard library only).

Sends --requests completions at once (--concurrency at a time) to a running glm-server,
each a prompt of --words random words (distinct per request, so the prefix cache finds
nothing but what the words share) with max_tokens --max-tokens, greedy, ignore_eos, and
prints one JSON object: wall time (first request sent to last answer read), output
tokens/s, the mean prompt length in tokens (from the server's usage), time to first token
and inter-token latency (p50, p99). With --stream the answers come as server-sent events
and the latencies are the client's (an event may carry more than one token when the
client reads late); without, TTFT and ITL are not measured. The requests are spread over
--procs processes (threads inside each), so that reading the events is not bound by one
Python interpreter.

It measures the server's throughput for comparison with glm-bench --serve on the same
checkpoint, -np and lengths (scripts/gpu-check.sh serve runs both):

  glm-server -m DIR -np 64 --port 8090 &
  python3 scripts/serve-load.py --url http://127.0.0.1:8090 --requests 64 --words 100 --max-tokens 128 --stream
"""
import argparse
import http.client
import json
import multiprocessing
import random
import sys
import threading
import time
import urllib.parse

WORDS = ("time year people way day man thing woman life child world school state family student group country "
         "problem hand part place case week company system program question work government number night point "
         "home water room mother area money story fact month lot right study book eye job word business issue side "
         "kind head house service friend father power hour game line end member law car city community name "
         "president team minute idea kid body information back parent face others level office door health person "
         "art war history party result change morning reason research girl guy moment air teacher force education").split()


def quantile(v, q):
    if not v:
        return 0.0
    v = sorted(v)
    k = max(1, int(-(-q * len(v) // 1)))
    return v[min(k, len(v)) - 1]


def one_request(url, body, stream, out):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        out["error"] = "HTTP %d: %s" % (resp.status, resp.read(300).decode("utf-8", "replace"))
        conn.close()
        return
    times, usage = [], None
    if stream:
        for raw in resp:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            ev = json.loads(data)
            if ev.get("usage"):
                usage = ev["usage"]
            if ev.get("choices") and ev["choices"][0].get("text"):
                times.append(time.perf_counter())
    else:
        usage = json.loads(resp.read()).get("usage")
    t1 = time.perf_counter()
    conn.close()
    out.update(t0=t0, t1=t1, times=times, usage=usage)


def run_part(job):
    """One process's share: its bodies, at most conc in flight, one thread each."""
    url, bodies, stream, conc = job
    results = [dict() for _ in bodies]
    limit = threading.Semaphore(conc)

    def run(i):
        with limit:
            try:
                one_request(url, bodies[i], stream, results[i])
            except (OSError, ValueError, http.client.HTTPException) as e:
                results[i]["error"] = repr(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=0, help="requests in flight at once (default: all)")
    ap.add_argument("--words", type=int, default=100, help="random words a prompt")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--procs", type=int, default=8, help="client processes (default 8)")
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    bodies = []
    for i in range(a.requests):
        prompt = " ".join(rnd.choice(WORDS) for _ in range(a.words))
        b = {"prompt": "%d %s" % (i, prompt), "max_tokens": a.max_tokens, "temperature": 0, "ignore_eos": True,
             "stream": a.stream}
        if a.stream:
            b["stream_options"] = {"include_usage": True}
        bodies.append(b)
    procs = max(1, min(a.procs, a.requests))
    conc = a.concurrency or a.requests
    jobs = [(a.url, bodies[p::procs], a.stream, max(1, conc // procs)) for p in range(procs)]
    with multiprocessing.Pool(procs) as pool:
        parts = pool.map(run_part, jobs)
    results = [None] * a.requests
    for p, part in enumerate(parts):
        results[p::procs] = part
    done = [r for r in results if "t1" in r]
    wall = max(r["t1"] for r in done) - min(r["t0"] for r in done) if done else 0.0
    errors = [r["error"] for r in results if "error" in r]
    if errors or any("usage" not in r or not r["usage"] for r in results):
        print("serve-load: %d of %d requests failed; first: %s" % (len(errors) or a.requests, a.requests,
              errors[0] if errors else "no usage in the answer"), file=sys.stderr)
        return 1
    gen = sum(r["usage"]["completion_tokens"] for r in results)
    prompt = sum(r["usage"]["prompt_tokens"] for r in results) / len(results)
    ttft = [r["times"][0] - r["t0"] for r in results if r["times"]]
    itl = [b - a_ for r in results for a_, b in zip(r["times"], r["times"][1:])]
    print(json.dumps({
        "requests": a.requests, "concurrency": a.concurrency or a.requests, "stream": a.stream,
        "wall_s": round(wall, 4), "output_tokens": gen, "output_tok_per_s": round(gen / wall, 2),
        "prompt_tokens_mean": round(prompt, 2),
        "ttft_p50_ms": round(1e3 * quantile(ttft, 0.5), 3), "ttft_p99_ms": round(1e3 * quantile(ttft, 0.99), 3),
        "itl_p50_ms": round(1e3 * quantile(itl, 0.5), 3), "itl_p99_ms": round(1e3 * quantile(itl, 0.99), 3),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
