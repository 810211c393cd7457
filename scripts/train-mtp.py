#!/usr/bin/env python3
"""train-mtp.py - train the MTP (next-token prediction) layer of models/glm-tiny on the CPU.

The main model stays frozen; the MTP layer learns to draft what the main model itself
predicts (self-distillation: under greedy verification a draft is accepted when it is the
main model's argmax, not the text's next token). The main model's last hidden states
(before the final norm) and greedy next tokens come from the engine itself (a small C
program against libglm.a, glm_ctx_decode_hidden) over windows of W tokens, each a fresh
sequence, of two kinds:
  - text windows: W tokens of the tiny model's training text (--tokens);
  - continuation windows: P tokens of text, then the main model's greedy continuation
    (--gen-windows, --prompt), the text that greedy drafting sees;
(scripts/fetch-corpus.sh: .data/corpus/train.txt, documents framed [gMASK]<sop> text
<|endoftext|> as scripts/train-tiny.py does, encoded by glm-tokenize). The MTP layer, as
lib/spec.c and scripts/mtp-ref.py compute it:

    x[p] = eh_proj([enorm(embed(t[p+1])) (zero at position 0), hnorm(h[p])])
    x = decoder_layer(x)   (attention causal over the window, MoE: sigmoid router with the
                            correction bias, top-k, shared expert)
    draft logits[p] = lm_head(shared_head.norm(x[p]))

is trained with AdamW against, at row p, the main model after t[p+1]: --hard times the
cross-entropy of its greedy token plus (1 - --hard) times the cross-entropy of its
distribution (softmax of lm_head(norm(h[p+1]))). With --chain, the second draft of
lib/spec.c is trained too (weight --chain): row p at position p+1 on (t[p+2], the layer's
own output x[p]) in place of h[p+1], attending to the first pass's positions 0..p and
itself, against the main model after t[p+2]. The layer starts from the checkpoint's MTP
layer when it has one (--init auto; the committed layer: the main model's last layer
trained 40 minutes on 400,000 text tokens against the greedy token alone, then this
script's defaults), else (--init scratch)
from the main model's last layer with eh_proj [~0 | I]; the embedding and lm_head are the
main model's (frozen, not saved). The checkpoint kept is the one drafting best on the
validation continuations (its first windows). The layer is exported in the checkpoint's
format (GLM-4.7-FP8 per-channel: every Linear F8_E4M3 + BF16 weight_scale, norms and
router BF16, correction bias F32) as model-mtp.safetensors next to model.safetensors,
with a model.safetensors.index.json listing both and num_nextn_predict_layers 1 in
config.json; model.safetensors itself is not touched.

Needs torch (Debian python3-torch is enough) and a CPU build of the engine:
  make CUDA=0 BUILD=build-mtp all
  nice -n 10 /usr/bin/python3 scripts/train-mtp.py --build build-mtp [--minutes 25]
Debian's torch uses the BLAS that libblas.so.3 points to; the reference BLAS is ~25x
slower than OpenBLAS at these matrix products. Without installing libopenblas0 system-wide:
  apt-get download libopenblas0-pthread && dpkg -x libopenblas0-pthread_*.deb ob
  LD_LIBRARY_PATH=$PWD/ob/usr/lib/x86_64-linux-gnu/openblas-pthread OPENBLAS_NUM_THREADS=2 ...
(the defaults' 25 minutes are ~1,200 steps with OpenBLAS on 2 cores, after ~6 minutes of
hidden states from the engine).
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
/* hidden MODEL IDS.bin W P OUT.bin: windows of W tokens, each a fresh sequence, 64 decoding
 * together. A window's first P tokens are the next P ids of IDS.bin (W ids a window: the last
 * W-P unused when P < W), the others the main model's greedy continuation. Writes the main
 * model's last hidden state of every window token, float32 [n, n_embd], the window tokens,
 * int32 [n], then its greedy next token after every token, int32 [n]. */
#define S 64
int main(int argc, char **argv) {
    if (argc != 6) return 2;
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
    const int W = atoi(argv[3]), P = atoi(argv[4]), D = glm_model_hparams(m)->n_embd, V = glm_model_hparams(m)->n_vocab;
    if (P < 1 || P > W) return 2;
    n = n / W * W;
    glm_ctx_params cp = glm_ctx_default_params();
    cp.n_ctx = W; cp.n_batch = S * P; cp.n_seq_max = S; cp.n_threads = 2;
    glm_ctx *c;
    if (glm_ctx_new(m, &cp, &c)) { fprintf(stderr, "%s\n", glm_last_error()); return 1; }
    float *H = malloc((size_t)n * D * 4), *hb = malloc((size_t)S * P * D * 4);
    int32_t *tok = malloc((size_t)n * 4), *am = malloc((size_t)n * 4), *bt = malloc(S * P * 4), *bs = malloc(S * P * 4);
    long *at = malloc(S * P * sizeof *at);
    int8_t *want = malloc(S * P);
    memset(want, 1, S * P);
    memcpy(tok, ids, (size_t)n * 4);
    for (long w0 = 0; w0 < n / W; w0 += S) {
        const int s = n / W - w0 < S ? (int)(n / W - w0) : S;
        for (int t = 0; t < W; t += t ? 1 : P) {   /* the prompts together, then a token a step */
            int k = 0;
            for (int j = 0; j < s; j++) {
                if (!t) glm_ctx_seq_clear(c, j);
                for (int u = t; u < (t ? t + 1 : P); u++, k++) {
                    at[k] = (w0 + j) * W + u;
                    if (u >= P) tok[at[k]] = am[at[k] - 1];
                    bt[k] = tok[at[k]];
                    bs[k] = j;
                }
            }
            glm_batch b = { k, bt, bs, want };
            if (glm_ctx_decode_hidden(c, &b, hb)) { fprintf(stderr, "%s\n", glm_last_error()); return 1; }
            for (int r = 0; r < k; r++) {
                memcpy(H + at[r] * D, hb + (size_t)r * D, (size_t)D * 4);
                const float *l = glm_ctx_logits(c, r);
                int best = 0;
                for (int v = 1; v < V; v++) if (l[v] > l[best]) best = v;
                am[at[r]] = best;
            }
        }
    }
    FILE *o = fopen(argv[5], "wb");
    fwrite(H, 4, (size_t)n * D, o);
    fwrite(tok, 4, (size_t)n, o);
    fwrite(am, 4, (size_t)n, o);
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


def hidden_states(build, model, ids, W, P):
    """[n_windows, W, D] hidden states from the engine, the window tokens [n_windows, W] (the
    first P of each window from ids, W ids a window, the rest the main model's greedy
    continuation) and the main model's greedy next token after each token [n_windows, W]."""
    tmp = tempfile.mkdtemp()
    src, exe = os.path.join(tmp, "hidden.c"), os.path.join(tmp, "hidden")
    open(src, "w").write(HIDDEN_C)
    subprocess.run(["cc", "-O2", "-std=c11", "-D_GNU_SOURCE", "-Ilib", src, os.path.join(build, "lib", "libglm.a"),
                    "-lutf8proc", "-lm", "-pthread", "-o", exe], check=True)
    n = len(ids) // W * W
    with open(os.path.join(tmp, "ids.bin"), "wb") as f:
        f.write(struct.pack("<%di" % n, *ids[:n]))
    subprocess.run([exe, model, os.path.join(tmp, "ids.bin"), str(W), str(P), os.path.join(tmp, "h.bin")], check=True)
    raw = bytearray(open(os.path.join(tmp, "h.bin"), "rb").read())
    nh = len(raw) // 4 - 2 * n
    h = torch.frombuffer(raw[: nh * 4], dtype=torch.float32).reshape(n // W, W, -1).clone()
    tok = torch.frombuffer(raw[nh * 4: (nh + n) * 4], dtype=torch.int32).to(torch.int64).reshape(n // W, W)
    greedy = torch.frombuffer(raw[(nh + n) * 4:], dtype=torch.int32).to(torch.int64).reshape(n // W, W)
    for p in ("hidden.c", "hidden", "ids.bin", "h.bin"):
        os.unlink(os.path.join(tmp, p))
    os.rmdir(tmp)
    return h, tok, greedy


class MTP(torch.nn.Module):
    """The MTP layer; the main model's weights come from m (a mtp-ref Model)."""

    def __init__(self, m, init="auto"):
        super().__init__()
        c, W, L = m.c, m.W, m.L
        last = "model.layers.%d." % (L - 1)
        mine = "model.layers.%d." % L
        D = m.D
        P = lambda t: torch.nn.Parameter(t.clone())
        self.m = m
        self.names = [k[len(last):] for k in W if k.startswith(last)]
        self.resumed = init == "auto" and all(mine + k in W for k in self.names) and mine + "eh_proj.weight" in W
        if self.resumed:     # the checkpoint's own MTP layer
            self.enorm, self.hnorm = P(W[mine + "enorm.weight"]), P(W[mine + "hnorm.weight"])
            self.eh_proj = P(W[mine + "eh_proj.weight"])
            self.head_norm = P(W[mine + "shared_head.norm.weight"])
            last = mine
        else:                # the main model's last layer, eh_proj [~0 | I]
            self.enorm, self.hnorm = P(torch.ones(D)), P(torch.ones(D))
            eh = torch.zeros(D, 2 * D)
            eh[:, D:] = torch.eye(D)
            eh[:, :D] = torch.randn(D, D) * 0.02
            self.eh_proj = P(eh)
            self.head_norm = P(W["model.norm.weight"])
        self.blk = torch.nn.ParameterDict()
        for k in self.names:
            if k == "mlp.gate.e_score_correction_bias":
                continue
            self.blk[k.replace(".", "__")] = P(W[last + k])
        self.register_buffer("bias", W[last + "mlp.gate.e_score_correction_bias"].clone())
        self.E, self.K = c["n_routed_experts"], c["num_experts_per_tok"]

    def w(self, k):
        return self.blk[k.replace(".", "__")]

    def block(self, x, pos, prev=None):
        """The decoder layer over windows x [B, T, D] at positions pos [T] (experts evaluated
        densely); returns the output and the attention's (k, v). prev None: attention causal
        over the window. prev = (k, v) of a pass over positions 0..T: row j attends to prev's
        positions before pos[j] and to itself, as a chained draft sees the MTP cache."""
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
        if prev is None:
            att = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(m.hd)
            att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf")).softmax(-1)
            o = torch.einsum("bhts,bshd->bthd", att, v)
        else:
            pk, pv = prev
            S = pk.shape[1]
            a1 = torch.einsum("bthd,bshd->bhts", q, pk) / math.sqrt(m.hd)
            a1 = a1.masked_fill(torch.arange(S)[None, :] >= pos[:, None], float("-inf"))
            a2 = torch.einsum("bthd,bthd->bht", q, k)[..., None] / math.sqrt(m.hd)
            att = torch.cat([a1, a2], -1).softmax(-1)
            o = torch.einsum("bhts,bshd->bthd", att[..., :S], pv) + att[..., S].transpose(1, 2)[..., None] * v
        x = x + o.reshape(B, T, m.H * m.hd) @ self.w("self_attn.o_proj.weight").T
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
        return x + y, (k, v)

    def step(self, nxt, h, pos, prev=None):
        """The layer's output hidden states [B, T, D], its draft logits [B, T, V] and its
        attention's (k, v), from the next tokens nxt [B, T] and hidden states h [B, T, D]."""
        m = self.m
        e = m.W["model.embed_tokens.weight"][nxt] * (pos != 0).float()[None, :, None]
        x = torch.cat([m.rms(e, self.enorm), m.rms(h, self.hnorm)], -1) @ self.eh_proj.T
        x, kv = self.block(x, pos, prev)
        return x, m.rms(x, self.head_norm) @ m.W["lm_head.weight"].T, kv

    def forward(self, nxt, h, chain=False):
        """Over windows of T+2 tokens nxt [B, T+2] with their hidden states h [B, T+2, D]:
        row p = the layer on (nxt[p+1], h[p]) at position p, its logits [B, T, V] drafting
        the token after nxt[p+1]. chain: also the second drafts [B, T-1, V], row p = the
        layer at position p+1 on (nxt[p+2], its own output at p), attending to the first
        pass's positions 0..p and itself (lib/spec.c's draft 2)."""
        T = nxt.shape[1] - 2
        pos = torch.arange(T)
        x1, l1, kv = self.step(nxt[:, 1:-1], h[:, :-2], pos)
        if not chain:
            return l1, None
        _, l2, _ = self.step(nxt[:, 2:-1], x1[:, :-1], pos[1:], kv)
        return l1, l2


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
    ap.add_argument("--tokens", type=int, default=200000, help="training tokens of text (windows of --window)")
    ap.add_argument("--gen-windows", type=int, default=8000,
                    help="windows of --prompt tokens of text and the main model's greedy continuation")
    ap.add_argument("--window", type=int, default=96)
    ap.add_argument("--prompt", type=int, default=48, help="text tokens before the continuation in a --gen-windows window")
    ap.add_argument("--batch", type=int, default=16, help="windows a step")
    ap.add_argument("--minutes", type=float, default=25.0, help="training time")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine to a tenth over --minutes)")
    ap.add_argument("--hard", type=float, default=0.5,
                    help="weight of the greedy token's cross-entropy; the rest: the main model's distribution")
    ap.add_argument("--chain", type=float, default=0.5, help="weight of the second (chained) draft's loss; 0: none")
    ap.add_argument("--init", choices=("auto", "scratch"), default="auto",
                    help="auto: from the checkpoint's MTP layer when it has one; scratch: from the last layer")
    ap.add_argument("--out", default=None, help="directory to export into (default: --model)")
    a = ap.parse_args()
    if a.gen_windows < 1 or not 1 <= a.prompt < a.window - 2:
        ap.error("--gen-windows must be at least 1 and --prompt in [1, --window - 3]")
    torch.manual_seed(0)
    torch.set_num_threads(2)
    W, P = a.window, a.prompt
    n_text = a.tokens // W * W
    ids = encode(a.build, a.model, a.corpus, n_text + a.gen_windows * W)
    log("encoded %d ids" % len(ids))
    h, x, y = hidden_states(a.build, a.model, ids[:n_text], W, W)
    log("text windows: hidden states %s" % (list(h.shape),))
    hg, xg, yg = hidden_states(a.build, a.model, ids[n_text:], W, P)
    log("continuation windows: hidden states %s" % (list(hg.shape),))
    nv, ng = max(1, h.shape[0] // 50), max(1, hg.shape[0] // 50)   # the first windows for validation
    hv, xv, yv, hgv, xgv, ygv = h[:nv], x[:nv], y[:nv], hg[:ng], xg[:ng], yg[:ng]
    ht, xt, yt = torch.cat([h[nv:], hg[ng:]]), torch.cat([x[nv:], xg[ng:]]), torch.cat([y[nv:], yg[ng:]])
    del h, x, y, hg, xg, yg
    m = ref.Model(a.model)
    for k in list(m.W):                          # the main model's tensors take no gradient
        m.W[k].requires_grad_(False)
    mtp = MTP(m, a.init)
    log("started from %s" % ("the checkpoint's MTP layer" if mtp.resumed else "the main model's last layer"))
    opt = torch.optim.AdamW(mtp.parameters(), lr=a.lr, weight_decay=0.01)

    def teacher(hb):   # the main model's logits from its hidden states
        return m.rms(hb, m.W["model.norm.weight"]) @ m.W["lm_head.weight"].T

    def dloss(lg, tl, yb):   # hard: the greedy token; soft: the main model's distribution
        lg, tl, yb = lg.reshape(-1, lg.shape[-1]), tl.reshape(-1, tl.shape[-1]), yb.reshape(-1)
        lp = lg.log_softmax(-1)
        return a.hard * F.nll_loss(lp, yb) - (1 - a.hard) * (tl.softmax(-1) * lp).sum(-1).mean()

    # row p: (t[p+1], h[p]) -> the main model's greedy token after t[p+1] (what a greedy
    # draft must match to be accepted) and its distribution there; chained, row p at
    # position p+1: (t[p+2], the layer's output at p) -> the main model's after t[p+2]
    def loss_of(hb, xb, yb, chain):
        with torch.no_grad():
            tl = teacher(hb[:, 1:-1])
        l1, l2 = mtp(xb, hb, chain)
        loss1 = dloss(l1, tl, yb[:, 1:-1])
        return loss1, (dloss(l2, tl[:, 1:], yb[:, 2:-1]) if chain else None)

    def val():
        """Text windows: loss and agreement of the first draft with the main model's greedy
        token. Continuation windows (the rows drafting inside the continuation, as decoding
        drafts): the first draft's agreement a1 (greedy acceptance at --draft 1) and
        mean(a1 (1 + a2)) / 2 with a2 the chained second draft's (at --draft 2)."""
        with torch.no_grad():
            l1, _ = mtp(xv, hv)
            vl = dloss(l1, teacher(hv[:, 1:-1]), yv[:, 1:-1]).item()
            acc = (l1.argmax(-1) == yv[:, 1:-1]).float().mean().item()
            l1, l2 = mtp(xgv, hgv, True)
            a1 = (l1.argmax(-1) == ygv[:, 1:-1]).float()[:, P - 1:]
            a2 = (l2.argmax(-1) == ygv[:, 2:-1]).float()[:, P - 1:]
            return vl, acc, a1.mean().item(), (a1[:, :-1] * (1 + a2)).mean().item() / 2

    def show(v):
        return "text: loss %.3f, agreement %.3f; continuation: draft 1 %.3f, draft 2 %.3f" % v

    v0 = val()
    log("before: " + show(v0))
    t0, step, best = time.time(), 0, None
    g = torch.Generator().manual_seed(1)
    while time.time() - t0 < a.minutes * 60:
        frac = (time.time() - t0) / (a.minutes * 60)
        lr = a.lr * min(1.0, (step + 1) / 50) * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))
        for pg in opt.param_groups:
            pg["lr"] = lr
        idx = torch.randint(0, ht.shape[0], (a.batch,), generator=g)
        loss1, loss2 = loss_of(ht[idx], xt[idx], yt[idx], a.chain > 0)
        loss = loss1 + a.chain * loss2 if loss2 is not None else loss1
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(mtp.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            v = val()
            log("step %d: train loss %.3f (first draft) %s, %s" % (step, loss1.item(), "%.3f (second)" % loss2.item() if loss2 is not None else "", show(v)))
            if best is None or v[3] > best[0][3]:
                best = (v, {k: t.detach().clone() for k, t in mtp.state_dict().items()})
    v = val()
    if best is None or v[3] > best[0][3]:
        best = (v, {k: t.detach().clone() for k, t in mtp.state_dict().items()})
    mtp.load_state_dict(best[1])
    log("best after %d steps (%.1f minutes): %s" % (step, (time.time() - t0) / 60, show(best[0])))
    export(mtp, m, a.out or a.model)
    log("exported into %s" % (a.out or a.model))


if __name__ == "__main__":
    main()
