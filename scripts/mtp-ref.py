#!/usr/bin/env python3
"""mtp-ref.py - a plain PyTorch (fp32) reference for GLM-4 MoE's MTP layer.

transformers has no MTP forward for glm4_moe, so this script implements the whole tiny
model: the main model (to get its last hidden states, before the final norm) and the MTP
layer (layer num_hidden_layers) as vLLM's glm4_moe_mtp computes it:

    e = embed(token after p)            (zero at position 0)
    x = eh_proj([enorm(e), hnorm(h_p)])
    x = decoder_layer(x)                (attention over the MTP layer's own cache, MoE)
    logits = lm_head(shared_head.norm(x))

It reads the checkpoint's safetensors with a small reader (JSON header + torch.frombuffer;
no safetensors package) and writes the draft head's logits for every position of a fixed
id sequence:

    magic "GLMMTPRF", u32 version 1, u32 n_ids, u32 n_vocab, i32 ids[n_ids],
    f32 logits[n_ids - 1][n_vocab]   (row p: the MTP layer at position p, which predicts
                                      the token at p + 2)

Usage: mtp-ref.py MODEL_DIR OUT_FILE [ID ...]
"""
import json
import math
import os
import struct
import sys

import torch

DT = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F8_E4M3": torch.uint8}


def fp8_e4m3(b):
    """The value of an F8_E4M3 (fn) byte: 1 sign, 4 exponent (bias 7), 3 mantissa bits; 0x7f/0xff NaN."""
    s, e, m = -1.0 if b & 0x80 else 1.0, (b >> 3) & 15, b & 7
    if e == 15 and m == 7:
        return float("nan")
    return s * (m / 8.0 * 2.0 ** -6 if e == 0 else (1 + m / 8.0) * 2.0 ** (e - 7))


FP8_LUT = torch.tensor([fp8_e4m3(b) for b in range(256)], dtype=torch.float32)


def read_safetensors(path):
    """Returns {name: fp32 tensor} of one file (scales kept by name)."""
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, t in hdr.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        buf = bytearray(raw[base + b:base + e])
        x = torch.frombuffer(buf, dtype=DT[t["dtype"]]) if e > b else torch.zeros(0, dtype=DT[t["dtype"]])
        x = FP8_LUT[x.long()] if t["dtype"] == "F8_E4M3" else x.to(torch.float32)
        out[name] = x.reshape(t["shape"])
    return out


def load(dir_):
    """All tensors of a checkpoint directory, FP8 weights dequantised (per channel or 128x128 block)."""
    idx = os.path.join(dir_, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
    W = {}
    for f in files:
        W.update(read_safetensors(os.path.join(dir_, f)))
    for name in [k for k in W if k.endswith("_scale") or k.endswith("_scale_inv")]:
        w = name[: name.rindex("_scale")]
        s = W.pop(name)
        if name.endswith("_scale"):
            W[w] = W[w] * s.reshape(-1, 1)
        else:
            r, c = W[w].shape
            W[w] = W[w] * s.repeat_interleave(128, 0)[:r].repeat_interleave(128, 1)[:, :c]
    return W


class Model:
    def __init__(self, dir_):
        self.c = json.load(open(os.path.join(dir_, "config.json")))
        self.W = load(dir_)
        c = self.c
        self.D, self.L = c["hidden_size"], c["num_hidden_layers"]
        self.H, self.KV, self.hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        self.rot = int(self.hd * c.get("partial_rotary_factor", 0.5))
        self.eps, self.theta = c["rms_norm_eps"], c["rope_theta"]

    def w(self, name):
        return self.W[name]

    def rms(self, x, w):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.eps) * w

    def rope(self, x, pos):  # x [T, heads, hd]; rotate-half on the first rot dims
        half = self.rot // 2
        freq = self.theta ** (-2.0 * torch.arange(half, dtype=torch.float64) / self.rot)
        ang = pos.to(torch.float64)[:, None] * freq[None, :]
        c, s = torch.cos(ang).float()[:, None, :], torch.sin(ang).float()[:, None, :]
        x0, x1 = x[..., :half], x[..., half:self.rot]
        return torch.cat([x0 * c - x1 * s, x1 * c + x0 * s, x[..., self.rot:]], -1)

    def layer(self, il, x, pos):
        """One decoder layer over the whole sequence x [T, D] (causal attention)."""
        p, c, T = "model.layers.%d." % il, self.c, x.shape[0]
        h = self.rms(x, self.w(p + "input_layernorm.weight"))
        q = (h @ self.w(p + "self_attn.q_proj.weight").T + self.W.get(p + "self_attn.q_proj.bias", 0)).view(T, self.H, self.hd)
        k = (h @ self.w(p + "self_attn.k_proj.weight").T + self.W.get(p + "self_attn.k_proj.bias", 0)).view(T, self.KV, self.hd)
        v = (h @ self.w(p + "self_attn.v_proj.weight").T + self.W.get(p + "self_attn.v_proj.bias", 0)).view(T, self.KV, self.hd)
        if c.get("use_qk_norm"):
            q = self.rms(q, self.w(p + "self_attn.q_norm.weight"))
            k = self.rms(k, self.w(p + "self_attn.k_norm.weight"))
        q, k = self.rope(q, pos), self.rope(k, pos)
        g = self.H // self.KV
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
        att = torch.einsum("thd,shd->hts", q, k) / math.sqrt(self.hd)
        att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1)[None], float("-inf")).softmax(-1)
        o = torch.einsum("hts,shd->thd", att, v).reshape(T, self.H * self.hd)
        x = x + o @ self.w(p + "self_attn.o_proj.weight").T
        h = self.rms(x, self.w(p + "post_attention_layernorm.weight"))
        silu = torch.nn.functional.silu

        def mlp(q_, h_):
            return (silu(h_ @ self.w(q_ + "gate_proj.weight").T) * (h_ @ self.w(q_ + "up_proj.weight").T)) @ self.w(q_ + "down_proj.weight").T

        if il < c["first_k_dense_replace"]:
            return x + mlp(p + "mlp.", h)
        sc = torch.sigmoid(h @ self.w(p + "mlp.gate.weight").T)  # [T, E]
        choice = sc + self.w(p + "mlp.gate.e_score_correction_bias")
        top = choice.topk(c["num_experts_per_tok"], -1).indices
        wt = sc.gather(-1, top)
        if c.get("norm_topk_prob", True):
            wt = wt / (wt.sum(-1, keepdim=True) + 1e-20)
        wt = wt * c.get("routed_scaling_factor", 1.0)
        y = torch.zeros_like(x)
        for t in range(T):
            for j in range(top.shape[1]):
                y[t] += wt[t, j] * mlp(p + "mlp.experts.%d." % int(top[t, j]), h[t:t + 1])[0]
        if c.get("n_shared_experts", 1) > 0:
            y = y + mlp(p + "mlp.shared_experts.", h)
        return x + y

    def hidden(self, ids):
        """The main model's last hidden states (before the final norm) [T, D]."""
        pos = torch.arange(len(ids))
        x = self.w("model.embed_tokens.weight")[torch.tensor(ids)]
        for il in range(self.L):
            x = self.layer(il, x, pos)
        return x

    def mtp_logits(self, ids):
        """Draft logits [T-1, V]: row p = the MTP layer on (ids[p+1], h_p) at position p."""
        h = self.hidden(ids)[:-1]
        T = h.shape[0]
        p = "model.layers.%d." % self.L
        emb_w = self.W.get(p + "embed_tokens.weight", self.w("model.embed_tokens.weight"))
        head = self.W.get(p + "shared_head.head.weight", self.w("lm_head.weight"))
        e = emb_w[torch.tensor(ids[1:])].clone()
        pos = torch.arange(T)
        e[pos == 0] = 0
        x = torch.cat([self.rms(e, self.w(p + "enorm.weight")), self.rms(h, self.w(p + "hnorm.weight"))], -1)
        x = x @ self.w(p + "eh_proj.weight").T
        x = self.layer(self.L, x, pos)
        return self.rms(x, self.w(p + "shared_head.norm.weight")) @ head.T


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    m = Model(sys.argv[1])
    V = m.c["vocab_size"]
    ids = [int(a) for a in sys.argv[3:]] or [(i * 37 + 11) % V for i in range(12)]
    with torch.no_grad():
        lg = m.mtp_logits(ids).contiguous()
    with open(sys.argv[2], "wb") as f:
        f.write(b"GLMMTPRF" + struct.pack("<III", 1, len(ids), V))
        f.write(struct.pack("<%di" % len(ids), *ids))
        f.write(lg.numpy().astype("<f4").tobytes())
    print("%s: %d ids, %d rows of %d logits, max |logit| %.4f" % (sys.argv[2], len(ids), lg.shape[0], V, lg.abs().max()))


if __name__ == "__main__":
    main()
