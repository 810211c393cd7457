#!/usr/bin/env python3
"""train-mtp.py - train the MTP (next-token prediction) layer of models/glm-tiny on the CPU.

The main model stays frozen. Its last hidden states (before the final norm) come from the
engine itself (a small C program against libglm.a, glm_ctx_decode_hidden), over windows of
W tokens of the tiny model's training text (scripts/fetch-corpus.sh: .data/corpus/train.txt,
documents framed [gMASK]<sop> text <|endoftext|> as scripts/train-tiny.py does, encoded by
glm-tokenize). The MTP layer, as lib/spec.c and scripts/mtp-ref.py compute it:

    x = eh_proj([enorm(embed(t[p+1])) (zero at position 0), hnorm(h[p])])
    x = decoder_layer(x)   (attention causal over the window, MoE: sigmoid router with the
                            correction bias, top-k, shared expert)
    loss = cross_entropy(lm_head(shared_head.norm(x)), t[p+2])

is trained with AdamW, its decoder block started from the main model's last layer and
eh_proj from [0 | I]; the embedding and lm_head are the main model's (frozen, not saved).
The layer is exported in the checkpoint's format (GLM-4.7-FP8 per-channel: every Linear
F8_E4M3 + BF16 weight_scale, norms and router BF16, correction bias F32) as
model-mtp.safetensors next to model.safetensors, with a model.safetensors.index.json
listing both and num_nextn_predict_layers 1 in config.json; model.safetensors itself is
not touched.

Needs torch (Debian python3-torch is enough) and a CPU build of the engine:
  make CUDA=0 BUILD=build-mtp all
  nice -n 10 /usr/bin/python3 scripts/train-mtp.py --build build-mtp [--minutes 40]
"""
import argparse
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from importlib import import_module

ref = import_module("mtp-ref")   # the safetensors reader and the plain forward's helpers

HIDDEN_C = r'''
#include "backend.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
/* hidden MODEL IDS.bin W OUT.bin: the main model's last hidden state of every id, in
 * windows of W tokens (each window a fresh sequence), as float32 [n, n_embd], then its
 * greedy next token after every id, int32 [n]. */
int main(int argc, char **argv) {
    if (argc != 5) return 2;
    glm_model_params mp = glm_model_default_params();
    mp.mtp = GLM_MTP_OFF;
    glm_model *m;
    if (glm_model_load(argv[1], &mp, &m)) { fprintf(stderr, "%s\n", glm_last_error()); return 1; }
    FILE *f = fopen(argv[2], "rb");
    fseek(f, 0, SEEK_END);
    long n = ftell(f) / 4;
    fseek(f, 0, SEEK_SET);
    int32_t *ids = malloc(n * 4);
    if (fread(ids, 4, n, f) != (size_t)n) return 1;
    fclose(f);
    int W = atoi(argv[3]), D = glm_model_hparams(m)->n_embd;
    glm_ctx_params cp = glm_ctx_default_params();
    cp.n_ctx = W; cp.n_batch = W; cp.n_threads = 2;
    glm_ctx *c;
    if (glm_ctx_new(m, &cp, &c)) { fprintf(stderr, "%s\n", glm_last_error()); return 1; }
    float *h = malloc((size_t)W * D * 4);
    int32_t *am = malloc((size_t)n * 4);
    int8_t *want = malloc(W);
    memset(want, 1, W);
    const int V = glm_model_hparams(m)->n_vocab;
    FILE *o = fopen(argv[4], "wb");
    long done = 0;
    for (long i = 0; i + W <= n; i += W, done = i) {
        glm_ctx_seq_clear(c, 0);
        glm_batch b = { W, ids + i, NULL, want };
        if (glm_ctx_decode_hidden(c, &b, h)) { fprintf(stderr, "%s\n", glm_last_error()); return 1; }
        fwrite(h, 4, (size_t)W * D, o);
        for (int t = 0; t < W; t++) {
            const float *l = glm_ctx_logits(c, t);
            int best = 0;
            for (int v = 1; v < V; v++) if (l[v] > l[best]) best = v;
            am[i + t] = best;
        }
    }
    fwrite(am, 4, (size_t)done, o);
    fclose(o);
    return 0;
}
'''


def log(*a):
    print("[%s]" % time.strftime("%H:%M:%S"), *a, flush=True)


def encode(build, model, path, max_tokens):
    """The training documents, framed and encoded, cut to max_tokens ids."""
    with open(path, encoding="utf-8") as f:
        docs = [d.strip("\n") for d in f.read().split("\n\n") if d.strip()]
    g = torch.Generator().manual_seed(1234)
    order = torch.randperm(len(docs), generator=g).tolist()
    text = "".join("[gMASK]<sop>" + docs[i] + "<|endoftext|>" for i in order)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as t:
        t.write(text[: max_tokens * 8])   # ~4 characters a token: enough text, not all of it
    out = subprocess.run([os.path.join(build, "bin", "glm-tokenize"), "-m", model, "-f", t.name, "--ids"],
                         check=True, capture_output=True, text=True).stdout
    os.unlink(t.name)
    ids = json.loads(out)
    return ids[:max_tokens]


def hidden_states(build, model, ids, W):
    """[n_windows, W, D] hidden states from the engine, the ids as [n_windows, W], and the
    main model's greedy next token after each id [n_windows, W]."""
    tmp = tempfile.mkdtemp()
    src, exe = os.path.join(tmp, "hidden.c"), os.path.join(tmp, "hidden")
    open(src, "w").write(HIDDEN_C)
    subprocess.run(["cc", "-O2", "-std=c11", "-D_GNU_SOURCE", "-Ilib", src, os.path.join(build, "lib", "libglm.a"),
                    "-lutf8proc", "-lm", "-pthread", "-o", exe], check=True)
    n = len(ids) // W * W
    with open(os.path.join(tmp, "ids.bin"), "wb") as f:
        f.write(struct.pack("<%di" % n, *ids[:n]))
    subprocess.run([exe, model, os.path.join(tmp, "ids.bin"), str(W), os.path.join(tmp, "h.bin")], check=True)
    raw = bytearray(open(os.path.join(tmp, "h.bin"), "rb").read())
    nh = len(raw) // 4 - n
    h = torch.frombuffer(raw[: nh * 4], dtype=torch.float32).reshape(n // W, W, -1).clone()
    greedy = torch.frombuffer(raw[nh * 4:], dtype=torch.int32).to(torch.int64).reshape(n // W, W)
    for p in ("hidden.c", "hidden", "ids.bin", "h.bin"):
        os.unlink(os.path.join(tmp, p))
    os.rmdir(tmp)
    return h, torch.tensor(ids[:n], dtype=torch.int64).reshape(n // W, W), greedy


class MTP(torch.nn.Module):
    """The MTP layer; the main model's weights come from m (a mtp-ref Model)."""

    def __init__(self, m):
        super().__init__()
        c, W, L = m.c, m.W, m.L
        last = "model.layers.%d." % (L - 1)
        D = m.D
        P = lambda t: torch.nn.Parameter(t.clone())
        self.m = m
        self.enorm, self.hnorm = P(torch.ones(D)), P(torch.ones(D))
        eh = torch.zeros(D, 2 * D)
        eh[:, D:] = torch.eye(D)
        eh[:, :D] = torch.randn(D, D) * 0.02
        self.eh_proj = P(eh)
        self.head_norm = P(W["model.norm.weight"])
        self.blk = torch.nn.ParameterDict()
        self.names = [k[len(last):] for k in W if k.startswith(last)]
        for k in self.names:
            if k == "mlp.gate.e_score_correction_bias":
                continue
            self.blk[k.replace(".", "__")] = P(W[last + k])
        self.register_buffer("bias", W[last + "mlp.gate.e_score_correction_bias"].clone())
        self.E, self.K = c["n_routed_experts"], c["num_experts_per_tok"]

    def w(self, k):
        return self.blk[k.replace(".", "__")]

    def block(self, x, pos):
        """The decoder layer over windows x [B, T, D] (experts evaluated densely)."""
        m, B, T, D = self.m, x.shape[0], x.shape[1], x.shape[2]
        h = m.rms(x, self.w("input_layernorm.weight"))
        q = (h @ self.w("self_attn.q_proj.weight").T + self.w("self_attn.q_proj.bias")).view(B, T, m.H, m.hd)
        k = (h @ self.w("self_attn.k_proj.weight").T + self.w("self_attn.k_proj.bias")).view(B, T, m.KV, m.hd)
        v = (h @ self.w("self_attn.v_proj.weight").T + self.w("self_attn.v_proj.bias")).view(B, T, m.KV, m.hd)
        q, k = m.rms(q, self.w("self_attn.q_norm.weight")), m.rms(k, self.w("self_attn.k_norm.weight"))
        q = torch.stack([m.rope(q[b], pos) for b in range(B)])
        k = torch.stack([m.rope(k[b], pos) for b in range(B)])
        g = m.H // m.KV
        k, v = k.repeat_interleave(g, 2), v.repeat_interleave(g, 2)
        att = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(m.hd)
        att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf")).softmax(-1)
        o = torch.einsum("bhts,bshd->bthd", att, v).reshape(B, T, m.H * m.hd)
        x = x + o @ self.w("self_attn.o_proj.weight").T
        h = m.rms(x, self.w("post_attention_layernorm.weight"))
        sc = torch.sigmoid(h @ self.w("mlp.gate.weight").T)
        top = (sc + self.bias).topk(self.K, -1).indices
        wt = sc.gather(-1, top)
        wt = wt / (wt.sum(-1, keepdim=True) + 1e-20) * m.c.get("routed_scaling_factor", 1.0)
        dense_w = torch.zeros_like(sc).scatter(-1, top, wt)      # [B, T, E]
        y = 0
        for e in range(self.E):
            p = "mlp.experts.%d." % e
            a = F.silu(h @ self.w(p + "gate_proj.weight").T) * (h @ self.w(p + "up_proj.weight").T)
            y = y + dense_w[..., e:e + 1] * (a @ self.w(p + "down_proj.weight").T)
        p = "mlp.shared_experts."
        y = y + (F.silu(h @ self.w(p + "gate_proj.weight").T) * (h @ self.w(p + "up_proj.weight").T)) @ self.w(p + "down_proj.weight").T
        return x + y

    def forward(self, nxt, h):
        """Draft logits [B, T, V] from the next tokens nxt [B, T] and hidden states h [B, T, D]."""
        m, T = self.m, nxt.shape[1]
        pos = torch.arange(T)
        e = m.W["model.embed_tokens.weight"][nxt] * (pos != 0).float()[None, :, None]
        x = torch.cat([m.rms(e, self.enorm), m.rms(h, self.hnorm)], -1) @ self.eh_proj.T
        x = self.block(x, pos)
        return m.rms(x, self.head_norm) @ m.W["lm_head.weight"].T


def fp8_codes(x):
    """Round float32 x to the nearest F8_E4M3 (fn) code, ties to even; |x| <= 448."""
    lut = ref.FP8_LUT[:127]                      # codes 0..126: the non-negative finite values, ascending
    a = x.abs().clamp(max=448.0)
    hi = torch.searchsorted(lut, a.contiguous()).clamp(max=126)
    lo = (hi - 1).clamp(min=0)
    dlo, dhi = a - lut[lo], lut[hi] - a
    pick = torch.where((dhi < dlo) | ((dhi == dlo) & (hi % 2 == 0)), hi, lo)
    return (pick | ((x < 0) & (pick != 0)).long() * 128).to(torch.uint8)


def bf16_bytes(t):
    return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()


def export(mtp, m, out_dir):
    """Writes model-mtp.safetensors, the index and config.json's num_nextn_predict_layers."""
    L = m.L
    p = "model.layers.%d." % L
    T = {}
    lin = lambda name: name.endswith("proj.weight")
    with torch.no_grad():
        tensors = {p + "enorm.weight": mtp.enorm, p + "hnorm.weight": mtp.hnorm, p + "eh_proj.weight": mtp.eh_proj,
                   p + "shared_head.norm.weight": mtp.head_norm}
        for k in mtp.names:
            tensors[p + k] = mtp.bias if k == "mlp.gate.e_score_correction_bias" else mtp.w(k)
        for name, t in tensors.items():
            t = t.detach().float()
            if lin(name):
                s = (t.abs().amax(1, keepdim=True) / 448.0).clamp(min=1e-12)
                s = s.to(torch.bfloat16)
                s = torch.where(s.float() * 448.0 < t.abs().amax(1, keepdim=True), s.float() * (1 + 2 ** -7), s.float()).to(torch.bfloat16)
                T[name] = ("F8_E4M3", list(t.shape), fp8_codes(t / s.float()).numpy().tobytes())
                T[name + "_scale"] = ("BF16", [t.shape[0], 1], bf16_bytes(s))
            elif name.endswith("e_score_correction_bias"):
                T[name] = ("F32", list(t.shape), t.numpy().astype("<f4").tobytes())
            else:
                T[name] = ("BF16", list(t.shape), bf16_bytes(t))
    hdr, off, blobs = {}, 0, []
    for name in sorted(T):
        dt, shape, b = T[name]
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(os.path.join(out_dir, "model-mtp.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    main = ref.read_safetensors(os.path.join(out_dir, "model.safetensors"))
    wm = {k: "model.safetensors" for k in sorted(main)}
    wm.update({k: "model-mtp.safetensors" for k in sorted(T)})
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"format": "pt"}, "weight_map": wm}, f, indent=2)
        f.write("\n")
    cfg_path = os.path.join(out_dir, "config.json")
    text = open(cfg_path).read()
    cfg = json.loads(text)
    cfg["num_nextn_predict_layers"] = 1
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/glm-tiny")
    ap.add_argument("--corpus", default=".data/corpus/train.txt")
    ap.add_argument("--build", default="build")
    ap.add_argument("--tokens", type=int, default=400000, help="training tokens (windows of --window)")
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8, help="windows a step")
    ap.add_argument("--minutes", type=float, default=40.0, help="training time")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--out", default=None, help="directory to export into (default: --model)")
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    ids = encode(a.build, a.model, a.corpus, a.tokens)
    log("encoded %d ids" % len(ids))
    h, x, y = hidden_states(a.build, a.model, ids, a.window)
    log("hidden states %s" % (list(h.shape),))
    nv = max(1, h.shape[0] // 50)                # the first windows for validation
    hv, xv, yv, ht, xt, yt = h[:nv], x[:nv], y[:nv], h[nv:], x[nv:], y[nv:]
    m = ref.Model(a.model)
    for k in list(m.W):                          # the main model's tensors take no gradient
        m.W[k].requires_grad_(False)
    mtp = MTP(m)
    opt = torch.optim.AdamW(mtp.parameters(), lr=a.lr, weight_decay=0.01)

    # row p: (t[p+1], h[p]) -> the main model's greedy token after t[p+1] (what a greedy
    # draft must match to be accepted)
    def loss_of(hb, xb, yb):
        lg = mtp(xb[:, 1:-1], hb[:, :-2])
        return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), yb[:, 1:-1].reshape(-1))

    def val():   # loss, and how often the draft's argmax is the main model's (greedy acceptance)
        with torch.no_grad():
            lg = mtp(xv[:, 1:-1], hv[:, :-2])
            acc = (lg.argmax(-1) == yv[:, 1:-1]).float().mean().item()
            return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), yv[:, 1:-1].reshape(-1)).item(), acc

    l0, a0 = val()
    log("before: validation loss %.3f, agreement with the main model %.3f" % (l0, a0))
    t0, step, best = time.time(), 0, None
    g = torch.Generator().manual_seed(1)
    while time.time() - t0 < a.minutes * 60:
        lr = a.lr * min(1.0, (step + 1) / 50)
        for pg in opt.param_groups:
            pg["lr"] = lr
        idx = torch.randint(0, ht.shape[0], (a.batch,), generator=g)
        loss = loss_of(ht[idx], xt[idx], yt[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(mtp.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            vl, va = val()
            log("step %d: train loss %.3f, validation loss %.3f, agreement %.3f" % (step, loss.item(), vl, va))
            if best is None or vl < best[0]:
                best = (vl, va, {k: v.detach().clone() for k, v in mtp.state_dict().items()})
    vl, va = val()
    if best is None or vl < best[0]:
        best = (vl, va, {k: v.detach().clone() for k, v in mtp.state_dict().items()})
    mtp.load_state_dict(best[2])
    log("best: validation loss %.3f, agreement %.3f after %d steps" % (best[0], best[1], step))
    export(mtp, m, a.out or a.model)
    log("exported into %s" % (a.out or a.model))


if __name__ == "__main__":
    main()
