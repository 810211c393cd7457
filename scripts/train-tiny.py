#!/usr/bin/env python3
"""Train the tiny default model models/glm-tiny/ and write its perplexity fixture.

Why: the engine needs a small real Glm4MoeForCausalLM that produces readable English, in
the GLM-4.7-FP8 checkpoint format, with a golden perplexity to check the C tools against.

What it does (on one GPU, a few minutes; needs torch, transformers 5.x, tokenizers,
safetensors):
  1. Reads .data/corpus/{train,heldout}.txt (scripts/fetch-corpus.sh) and the tokenizer in
     models/glm-tiny/ (scripts/train-tokenizer.py). Each training document becomes
     [gMASK]<sop> text <|endoftext|>, as GLM's post-processor writes a prompt; every 50th
     training document is kept aside for validation (model selection).
  2. Trains a Glm4MoeForCausalLM with every GLM-4.7 feature (dense first layer, sigmoid
     routing with e_score_correction_bias, one shared expert, routed_scaling_factor 2.5,
     norm_topk_prob, q/k RMSNorm, q/k/v biases, partial rotary 0.5, GQA, head_dim*heads !=
     hidden) with AdamW, bf16 autocast, warm-up then cosine decay, 0.1 dropout on the
     embeddings and on each residual branch (training only; added with hooks).
     Routing bias: e_score_correction_bias is a buffer no gradient reaches; after each step
     it is updated the DeepSeek-V3 way (aux-loss-free balancing): b_e += u*sign(mean_load -
     load_e), u = 1e-3, load counted from the top-k choices of that step. So the exported
     bias is non-zero and changes which experts are chosen.
     For speed the routed experts are evaluated densely during training (every expert on
     every token, multiplied by the top-k weights, zero elsewhere): the same function as
     transformers' sparse loop, checked against it before training.
  3. Keeps the weights with the best validation loss and exports models/glm-tiny/ in the
     GLM-4.7-FP8 (compressed-tensors, per-channel) layout: config.json,
     generation_config.json, model.safetensors. Every Linear of attention, dense MLP, routed
     and shared experts is F8_E4M3 [N,K] + weight_scale BF16 [N,1] with s = amax_row/448
     (rounded up to BF16, so |w/s| <= 448); embed_tokens, lm_head, norms, q/k/v biases and
     the router mlp.gate.weight are BF16; e_score_correction_bias is F32. Experts are
     written with GLM's per-expert names model.layers.N.mlp.experts.E.{gate,up,down}_proj.
  4. Golden reference: the saved weights, FP8 dequantised as q*s in float32, loaded into
     transformers' Glm4MoeForCausalLM (eager attention, eager experts, float32, TF32 off).
     The logits are also checked against an independent plain-torch forward written from
     the per-expert tensors. Perplexity method (glm-perplexity uses the same): the ids are
     cut into consecutive windows of c=256 tokens (a last window of >= 2 tokens is kept);
     in each window every position 1..len-1 is scored from the window's earlier tokens;
     PPL = exp(sum NLL / n_scored). Held-out text is encoded with add_special_tokens=False.
     Written to tests/data/tiny-ppl/: heldout.txt (a held-out excerpt whose encoding has >=
     4096 tokens), heldout.ids (its first 4096 ids, comma-separated), ref.json.

Run on the GPU machine from the repository root:
  python3 scripts/train-tiny.py                      # full run, ~4 minutes of training
  python3 scripts/train-tiny.py --smoke --out /tmp/t --fixture /tmp/t/ppl   # quick check
Seeds are fixed; GPU training is not bit-reproducible, so a rerun gives a similar but
not identical model (the fixture always matches the model written with it).
"""

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import types

import torch
import torch.nn.functional as F

from glm_tiny_common import eager_reference_config, fp8_channel_quantization_config

# --------------------------------------------------------------------------- model shape

VOCAB = 8192
HIDDEN = 128
N_LAYERS = 6
FIRST_DENSE = 1
INTER = 512                # dense MLP of layer 0
MOE_INTER = 128            # each routed expert and the shared expert
N_EXPERTS = 16
TOPK = 4
N_SHARED = 1
ROUTED_SCALE = 2.5
N_HEADS = 4
N_KV = 2
HEAD_DIM = 64              # 4*64 = 256 != hidden 128, as GLM-4.7 (96*128 != 5120)
PARTIAL_ROTARY = 0.5
ROPE_THETA = 10000.0
EPS = 1e-5
CTX = 256
MAX_POS = 2048

FP8_MAX = 448.0
PPL_CTX = 256
PPL_TOKENS = 4096

QUANTIZED = re.compile(
    r"^model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj"
    r"|mlp\.(gate|up|down)_proj"
    r"|mlp\.experts\.\d+\.(gate|up|down)_proj"
    r"|mlp\.shared_experts\.(gate|up|down)_proj)\.weight$")


def model_config(tok_ids, quantized):
    cfg = {
        "architectures": ["Glm4MoeForCausalLM"],
        "model_type": "glm4_moe",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "num_hidden_layers": N_LAYERS,
        "first_k_dense_replace": FIRST_DENSE,
        "intermediate_size": INTER,
        "moe_intermediate_size": MOE_INTER,
        "n_routed_experts": N_EXPERTS,
        "num_experts_per_tok": TOPK,
        "n_shared_experts": N_SHARED,
        "routed_scaling_factor": ROUTED_SCALE,
        "norm_topk_prob": True,
        "n_group": 1,
        "topk_group": 1,
        "num_attention_heads": N_HEADS,
        "num_key_value_heads": N_KV,
        "head_dim": HEAD_DIM,
        "partial_rotary_factor": PARTIAL_ROTARY,
        "rope_theta": ROPE_THETA,
        "attention_bias": True,
        "attention_dropout": 0.0,
        "use_qk_norm": True,
        "hidden_act": "silu",
        "rms_norm_eps": EPS,
        "max_position_embeddings": MAX_POS,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "num_nextn_predict_layers": 0,
        "pad_token_id": tok_ids["<|endoftext|>"],
        "eos_token_id": [tok_ids["<|endoftext|>"], tok_ids["<|user|>"], tok_ids["<|observation|>"]],
        "use_cache": True,
        "dtype": "bfloat16",
    }
    if quantized:
        ignore = ["lm_head"] + ["model.layers.%d.mlp.gate" % l for l in range(FIRST_DENSE, N_LAYERS)]
        cfg["quantization_config"] = fp8_channel_quantization_config(ignore)
    return cfg


def log(*a):
    print(*a, flush=True)


# --------------------------------------------------------------------------- data

def load_tokenizer(d):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    if tok.get_vocab_size(with_added_tokens=True) != VOCAB:
        sys.exit("tokenizer vocabulary is %d, want %d" % (tok.get_vocab_size(with_added_tokens=True), VOCAB))
    names = ["<|endoftext|>", "[gMASK]", "<sop>", "<|user|>", "<|observation|>"]
    ids = {n: tok.token_to_id(n) for n in names}
    if any(v is None for v in ids.values()):
        sys.exit("tokenizer lacks one of %s" % names)
    return tok, ids


def encode_docs(tok, docs):
    out = []
    for i in range(0, len(docs), 64):
        out.extend(e.ids for e in tok.encode_batch(docs[i:i + 64], add_special_tokens=False))
    return out


def build_streams(tok, ids, train_path):
    with open(train_path, encoding="utf-8") as f:
        docs = [d.strip("\n") for d in f.read().split("\n\n") if d.strip()]
    g = torch.Generator().manual_seed(1234)
    order = torch.randperm(len(docs), generator=g).tolist()
    enc = encode_docs(tok, docs)
    train, val = [], []
    for j, i in enumerate(order):
        seq = [ids["[gMASK]"], ids["<sop>"]] + enc[i] + [ids["<|endoftext|>"]]
        (val if j % 50 == 49 else train).extend(seq)
    return torch.tensor(train, dtype=torch.int64), torch.tensor(val, dtype=torch.int64), len(docs)


# --------------------------------------------------------------------------- training helpers

def experts_of(model):
    return [l.mlp for l in model.model.layers if hasattr(l.mlp, "experts")]


def fused_layout(exp):
    """Return 'out_in' when gate_up_proj is [E, 2I, H] (gate rows first) and down_proj [E, H, I]."""
    gu, dn = exp.gate_up_proj, exp.down_proj
    if tuple(gu.shape) == (N_EXPERTS, 2 * MOE_INTER, HIDDEN) and tuple(dn.shape) == (N_EXPERTS, HIDDEN, MOE_INTER):
        return "out_in"
    if tuple(gu.shape) == (N_EXPERTS, HIDDEN, 2 * MOE_INTER) and tuple(dn.shape) == (N_EXPERTS, MOE_INTER, HIDDEN):
        return "in_out"
    raise RuntimeError("unexpected fused expert shapes %s %s" % (list(gu.shape), list(dn.shape)))


def dense_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """All experts on all tokens, combined with the top-k weights (zero for the others)."""
    n = hidden_states.shape[0]
    comb = torch.zeros(n, N_EXPERTS, device=hidden_states.device, dtype=top_k_weights.dtype)
    comb.scatter_(1, top_k_index, top_k_weights)
    gu = self.gate_up_proj if self._layout == "out_in" else self.gate_up_proj.transpose(1, 2)
    dn = self.down_proj if self._layout == "out_in" else self.down_proj.transpose(1, 2)
    x = torch.einsum("nh,eih->eni", hidden_states, gu)               # [E, N, 2I]
    g, u = x.chunk(2, dim=-1)
    a = F.silu(g) * u                                                 # [E, N, I]
    y = torch.einsum("eni,ehi->enh", a, dn)                           # [E, N, H]
    out = torch.einsum("enh,ne->nh", y, comb.to(y.dtype))
    return out.to(hidden_states.dtype)


def check_dense_experts(model):
    """The dense training path must compute what transformers' own expert code computes."""
    moe = experts_of(model)[0]
    exp = moe.experts
    torch.manual_seed(0)
    h = torch.randn(64, HIDDEN, device=exp.gate_up_proj.device)
    logits = torch.randn(64, N_EXPERTS, device=h.device)
    idx = torch.topk(logits, TOPK, dim=-1).indices
    w = torch.rand(64, TOPK, device=h.device)
    with torch.no_grad():
        ref = type(exp).forward(exp, h, idx, w)
        got = dense_experts_forward(exp, h, idx, w)
    err = (ref - got).abs().max().item()
    scale = ref.abs().max().item()
    log("dense experts vs transformers experts: max abs diff %.3g (max |y| %.3g)" % (err, scale))
    if not err <= 1e-4 * max(scale, 1.0):
        raise RuntimeError("dense expert evaluation disagrees with transformers")


def add_dropout_hooks(model, p):
    def emb_hook(mod, inp, out):
        return F.dropout(out, p, mod.training)

    def branch_hook(mod, inp, out):
        if isinstance(out, tuple):
            return (F.dropout(out[0], p, mod.training),) + tuple(out[1:])
        return F.dropout(out, p, mod.training)

    model.model.embed_tokens.register_forward_hook(emb_hook)
    for layer in model.model.layers:
        layer.self_attn.register_forward_hook(branch_hook)
        layer.mlp.register_forward_hook(branch_hook)


def add_load_counters(model):
    """Count, per MoE layer, how many tokens chose each expert in this step."""
    for moe in experts_of(model):
        gate = moe.gate
        gate._load = torch.zeros(N_EXPERTS, device=gate.weight.device, dtype=torch.float32)

        def hook(mod, inp, out):
            if not mod.training:
                return
            with torch.no_grad():
                if isinstance(out, tuple) and len(out) == 3:
                    idx = out[2]            # transformers 5.x: (router_logits, weights, indices)
                else:                       # a router that returns the logits only
                    logits = (out[0] if isinstance(out, tuple) else out).reshape(-1, N_EXPERTS).float()
                    idx = torch.topk(logits.sigmoid() + mod.e_score_correction_bias, TOPK, dim=-1).indices
                mod._load += torch.bincount(idx.reshape(-1), minlength=N_EXPERTS).float()

        gate.register_forward_hook(hook)


def update_bias(model, u):
    imbalance = []
    for moe in experts_of(model):
        gate = moe.gate
        load = gate._load
        if load.sum() > 0:
            gate.e_score_correction_bias += u * torch.sign(load.mean() - load)
            imbalance.append((load.max() / load.mean()).item())
        gate._load.zero_()
    return max(imbalance) if imbalance else 0.0


def lr_at(step, total, peak, warmup, floor):
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor * peak + (1 - floor) * peak * 0.5 * (1 + math.cos(math.pi * t))


def batches(stream, batch, ctx, gen):
    starts = torch.randint(0, stream.numel() - ctx - 1, (batch,), generator=gen)
    idx = starts[:, None] + torch.arange(ctx + 1)[None, :]
    b = stream[idx.to(stream.device)]
    return b[:, :-1], b[:, 1:]


@torch.no_grad()
def eval_loss(model, val, ctx, device, n_batches=8, batch=64):
    model.eval()
    n = (val.numel() - 1) // ctx
    tot, cnt = 0.0, 0
    for b in range(min(n_batches, max(1, n // batch))):
        rows = [val[(b * batch + i) * ctx:(b * batch + i) * ctx + ctx + 1] for i in range(batch)
                if (b * batch + i + 1) * ctx + 1 <= val.numel()]
        if not rows:
            break
        x = torch.stack(rows).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=x[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), x[:, 1:].reshape(-1), reduction="sum")
        tot += loss.item()
        cnt += x[:, 1:].numel()
    model.train()
    return tot / max(cnt, 1)


# --------------------------------------------------------------------------- export

def fp8_quantize(w):
    """Per-output-channel FP8 E4M3: returns (q float8_e4m3fn [N,K], s bfloat16 [N,1])."""
    w = w.float()
    amax = w.abs().amax(dim=1, keepdim=True)
    s = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    s_b = (s * (1.0 + 2.0 ** -7)).to(torch.bfloat16)      # never below s: |w/s_b| <= 448
    q = (w / s_b.float()).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.contiguous(), s_b.contiguous()


def export_tensors(model):
    """GLM-named tensors from the trained model, stored as the FP8 checkpoint holds them."""
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    glm = {}
    for k, v in sd.items():
        m = re.match(r"^(model\.layers\.(\d+)\.mlp\.experts)\.(gate_up_proj|down_proj)$", k)
        if m:
            pre = m.group(1)
            layout = model.model.layers[int(m.group(2))].mlp.experts._layout
            if layout == "in_out":
                v = v.transpose(1, 2)
            for e in range(N_EXPERTS):
                if m.group(3) == "gate_up_proj":
                    glm["%s.%d.gate_proj.weight" % (pre, e)] = v[e, :MOE_INTER, :].contiguous()
                    glm["%s.%d.up_proj.weight" % (pre, e)] = v[e, MOE_INTER:, :].contiguous()
                else:
                    glm["%s.%d.down_proj.weight" % (pre, e)] = v[e].contiguous()
            continue
        if "rotary_emb" in k:
            continue
        glm[k] = v
    for l in range(FIRST_DENSE, N_LAYERS):
        glm["model.layers.%d.mlp.gate.e_score_correction_bias" % l] = \
            model.model.layers[l].mlp.gate.e_score_correction_bias.detach().float().cpu()
    if "lm_head.weight" not in glm:
        raise RuntimeError("lm_head.weight missing from the state dict")

    out = {}
    for k, v in glm.items():
        if QUANTIZED.match(k):
            q, s = fp8_quantize(v)
            out[k] = q
            out[k[:-len("weight")] + "weight_scale"] = s
        elif k.endswith("e_score_correction_bias"):
            out[k] = v.float().contiguous()
        else:
            out[k] = v.to(torch.bfloat16).contiguous()
    return out


def dequantized(tensors):
    """float32 weights exactly as an engine reading the file sees them (q*s for FP8)."""
    W = {}
    for k, v in tensors.items():
        if k.endswith("weight_scale"):
            continue
        if v.dtype == torch.float8_e4m3fn:
            W[k] = v.float() * tensors[k[:-len("weight")] + "weight_scale"].float()
        else:
            W[k] = v.float()
    return W


# --------------------------------------------------------------------------- reference model

def build_reference(cfg_dir, W, device):
    from transformers import Glm4MoeForCausalLM
    model = Glm4MoeForCausalLM(eager_reference_config(cfg_dir, note=log)).float()
    check_shape(model)
    new = {}
    for k, v in model.state_dict().items():
        m = re.match(r"^(model\.layers\.(\d+)\.mlp\.experts)\.(gate_up_proj|down_proj)$", k)
        if m:
            pre = m.group(1)
            if m.group(3) == "gate_up_proj":
                t = torch.stack([torch.cat([W["%s.%d.gate_proj.weight" % (pre, e)],
                                            W["%s.%d.up_proj.weight" % (pre, e)]], 0) for e in range(N_EXPERTS)])
            else:
                t = torch.stack([W["%s.%d.down_proj.weight" % (pre, e)] for e in range(N_EXPERTS)])
            if tuple(t.shape) != tuple(v.shape):
                t = t.transpose(1, 2)
            new[k] = t.contiguous()
        elif k in W:
            new[k] = W[k]
        elif "rotary_emb" in k:
            continue
        else:
            raise RuntimeError("model tensor %s has no checkpoint counterpart" % k)
    missing, unexpected = model.load_state_dict(new, strict=False)
    missing = [k for k in missing if "rotary_emb" not in k]
    if missing or unexpected:
        raise RuntimeError("load_state_dict: missing %s unexpected %s" % (missing, unexpected))
    with torch.no_grad():
        for l in range(FIRST_DENSE, N_LAYERS):
            model.model.layers[l].mlp.gate.e_score_correction_bias.copy_(
                W["model.layers.%d.mlp.gate.e_score_correction_bias" % l])
    if model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr():
        raise RuntimeError("lm_head is tied to embed_tokens")
    return model.to(device).eval()


def check_shape(model):
    rd = int(HEAD_DIM * PARTIAL_ROTARY)
    inv = model.model.rotary_emb.inv_freq.float().cpu()
    want = 1.0 / (ROPE_THETA ** (torch.arange(0, rd, 2, dtype=torch.float32) / rd))
    if inv.shape != want.shape or not torch.allclose(inv, want, rtol=1e-6):
        raise RuntimeError("rotary inv_freq %s, want %s" % (inv.tolist(), want.tolist()))
    a = model.model.layers[0].self_attn
    if getattr(a, "q_norm", None) is None or a.q_proj.bias is None or a.o_proj.bias is not None:
        raise RuntimeError("attention is not built as GLM's (qk norm, q/k/v bias, no o bias)")
    if a.q_proj.weight.shape[0] != N_HEADS * HEAD_DIM:
        raise RuntimeError("q_proj has %d rows" % a.q_proj.weight.shape[0])
    if hasattr(model.model.layers[0].mlp, "experts") or not hasattr(model.model.layers[1].mlp, "experts"):
        raise RuntimeError("first_k_dense_replace not as intended")


def manual_logits(W, ids):
    """Independent float32 forward from the per-expert GLM tensors (DESIGN.md section 1)."""
    x = W["model.embed_tokens.weight"][ids]
    T = len(ids)
    rd = int(HEAD_DIM * PARTIAL_ROTARY)
    inv = 1.0 / (ROPE_THETA ** (torch.arange(0, rd, 2, dtype=torch.float32) / rd))
    ang = torch.arange(T, dtype=torch.float32)[:, None] * inv[None, :]
    cos, sin = torch.cos(ang), torch.sin(ang)

    def rms(v, w):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + EPS) * w

    def rope(t):  # t [T, heads, D]; NeoX pairing (i, i + rd/2) on the first rd dims
        r, rest = t[..., :rd], t[..., rd:]
        a, b = r[..., :rd // 2], r[..., rd // 2:]
        c, s = cos[:, None, :], sin[:, None, :]
        return torch.cat([a * c - b * s, b * c + a * s, rest], -1)

    def swiglu(h, g, u, d):
        return (F.silu(h @ g.T) * (h @ u.T)) @ d.T

    mask = torch.full((T, T), float("-inf")).triu(1)
    for l in range(N_LAYERS):
        p = "model.layers.%d." % l
        h = rms(x, W[p + "input_layernorm.weight"])
        q = (h @ W[p + "self_attn.q_proj.weight"].T + W[p + "self_attn.q_proj.bias"]).view(T, N_HEADS, HEAD_DIM)
        k = (h @ W[p + "self_attn.k_proj.weight"].T + W[p + "self_attn.k_proj.bias"]).view(T, N_KV, HEAD_DIM)
        v = (h @ W[p + "self_attn.v_proj.weight"].T + W[p + "self_attn.v_proj.bias"]).view(T, N_KV, HEAD_DIM)
        q = rope(rms(q, W[p + "self_attn.q_norm.weight"]))
        k = rope(rms(k, W[p + "self_attn.k_norm.weight"]))
        grp = N_HEADS // N_KV
        outs = []
        for hd in range(N_HEADS):
            sc = q[:, hd, :] @ k[:, hd // grp, :].T / math.sqrt(HEAD_DIM) + mask
            outs.append(torch.softmax(sc, -1) @ v[:, hd // grp, :])
        x = x + torch.cat(outs, -1) @ W[p + "self_attn.o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        if l < FIRST_DENSE:
            x = x + swiglu(h, W[p + "mlp.gate_proj.weight"], W[p + "mlp.up_proj.weight"], W[p + "mlp.down_proj.weight"])
            continue
        scores = torch.sigmoid(h @ W[p + "mlp.gate.weight"].T)
        choice = scores + W[p + "mlp.gate.e_score_correction_bias"]
        idx = torch.topk(choice, TOPK, dim=-1).indices
        wts = scores.gather(1, idx)
        wts = wts / (wts.sum(-1, keepdim=True) + 1e-20) * ROUTED_SCALE
        y = swiglu(h, W[p + "mlp.shared_experts.gate_proj.weight"], W[p + "mlp.shared_experts.up_proj.weight"],
                   W[p + "mlp.shared_experts.down_proj.weight"])
        for t in range(T):
            for j in range(TOPK):
                e = int(idx[t, j])
                q_ = p + "mlp.experts.%d." % e
                y[t] += wts[t, j] * swiglu(h[t:t + 1], W[q_ + "gate_proj.weight"], W[q_ + "up_proj.weight"],
                                           W[q_ + "down_proj.weight"])[0]
        x = x + y
    return rms(x, W["model.norm.weight"]) @ W["lm_head.weight"].T


@torch.no_grad()
def window_nll(model, ids, ctx, device, batch=64):
    """Sum of NLL (float64) and count over non-overlapping windows of ctx tokens."""
    wins = [ids[i:i + ctx] for i in range(0, len(ids), ctx)]
    wins = [w for w in wins if len(w) >= 2]
    full = [w for w in wins if len(w) == ctx]
    rest = [w for w in wins if len(w) != ctx]
    nll, n = 0.0, 0
    groups = [full[i:i + batch] for i in range(0, len(full), batch)] + [[w] for w in rest]
    for g in groups:
        x = torch.tensor(g, dtype=torch.int64, device=device)
        logits = model(input_ids=x, use_cache=False).logits.float()
        lp = torch.log_softmax(logits[:, :-1, :], dim=-1)
        tgt = x[:, 1:]
        nll += (-lp.gather(-1, tgt[..., None])[..., 0]).double().sum().item()
        n += tgt.numel()
    return nll, n


@torch.no_grad()
def continue_text(model, prompt_ids, n, device, temperature=0.0, seed=0, stop=None):
    g = torch.Generator(device=device).manual_seed(seed)
    seq = list(prompt_ids)
    for _ in range(n):
        x = torch.tensor([seq[-CTX:]], device=device)
        row = model(input_ids=x, use_cache=False).logits[0, -1].float()
        if temperature <= 0:
            nxt = int(torch.argmax(row))
        else:
            nxt = int(torch.multinomial(torch.softmax(row / temperature, -1), 1, generator=g))
        seq.append(nxt)
        if stop is not None and nxt in stop:
            break
    return seq[len(prompt_ids):]


# --------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=".data/corpus")
    ap.add_argument("--tokenizer", default="models/glm-tiny")
    ap.add_argument("--out", default="models/glm-tiny")
    ap.add_argument("--fixture", default="tests/data/tiny-ppl")
    ap.add_argument("--log", default=None, help="also write the training curve (JSON) here")
    ap.add_argument("--time-budget", type=float, default=225.0, help="seconds of training")
    ap.add_argument("--max-epochs", type=float, default=24.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--bias-rate", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=20251122)
    ap.add_argument("--smoke", action="store_true", help="a few steps only, to check the pipeline")
    args = ap.parse_args()

    import transformers
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, Glm4MoeForCausalLM

    device = "cuda"
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    log("torch %s, transformers %s, %s" % (torch.__version__, transformers.__version__,
                                          torch.cuda.get_device_name(0)))

    tok, tid = load_tokenizer(args.tokenizer)
    t0 = time.time()
    train, val, n_docs = build_streams(tok, tid, os.path.join(args.corpus, "train.txt"))
    train = train.to(device)
    log("corpus: %d documents, %d training tokens, %d validation tokens (%.1fs)"
        % (n_docs, train.numel(), val.numel(), time.time() - t0))

    # ---- model
    work = tempfile.mkdtemp(prefix="glm-tiny-")
    with open(os.path.join(work, "config.json"), "w") as f:
        json.dump(model_config(tid, quantized=False), f)
    cfg = AutoConfig.from_pretrained(work)
    for attr, value in (("_attn_implementation", "sdpa"), ("_experts_implementation", "eager")):
        try:
            setattr(cfg, attr, value)
        except Exception as e:
            log("  note: could not set %s: %s" % (attr, e))
    model = Glm4MoeForCausalLM(cfg).float().to(device)
    check_shape(model)
    for moe in experts_of(model):
        moe.experts._layout = fused_layout(moe.experts)
    log("fused experts: gate_up_proj %s, down_proj %s (layout %s)"
        % (list(experts_of(model)[0].experts.gate_up_proj.shape),
           list(experts_of(model)[0].experts.down_proj.shape), experts_of(model)[0].experts._layout))
    check_dense_experts(model)
    for moe in experts_of(model):
        moe.experts.forward = types.MethodType(dense_experts_forward, moe.experts)
    add_dropout_hooks(model, args.dropout)
    add_load_counters(model)
    n_params = sum(p.numel() for p in model.parameters())
    n_emb = model.model.embed_tokens.weight.numel() + model.lm_head.weight.numel()
    log("parameters: %d total (%d embed_tokens+lm_head, %d in layers)" % (n_params, n_emb, n_params - n_emb))

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embed_tokens" not in n else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)

    # ---- training
    gen = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = train.numel() / (args.batch * CTX)
    budget = 8.0 if args.smoke else args.time_budget
    total = max(1, int(args.max_epochs * steps_per_epoch))
    warmup = 10 if args.smoke else 150
    curve, best = [], (float("inf"), None, -1)
    model.train()
    t_start = time.time()
    step = 0
    eval_every = 25 if args.smoke else 250
    while step < total:
        lr = lr_at(step, total, args.lr, warmup, 0.1)
        for gr in opt.param_groups:
            gr["lr"] = lr
        x, y = batches(train, args.batch, CTX, gen)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=x, use_cache=False).logits
        loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            imb = update_bias(model, args.bias_rate)
        step += 1
        if step == 10:
            torch.cuda.synchronize()
            t10 = time.time()
        if step == 40:
            # now the speed is known: fit the schedule into the time budget
            torch.cuda.synchronize()
            per = (time.time() - t10) / 30
            left = budget - (time.time() - t_start)
            total = max(step + 1, min(total, step + int(left / per)))
            log("step time %.1f ms; %d steps planned (%.1f epochs of %.0f steps)"
                % (per * 1000, total, total / steps_per_epoch, steps_per_epoch))
        if step % eval_every == 0 or step == total:
            vl = eval_loss(model, val, CTX, device)
            el = time.time() - t_start
            curve.append({"step": step, "epoch": round(step / steps_per_epoch, 2), "time_s": round(el, 1),
                          "lr": lr, "train_loss": round(loss.item(), 4), "val_loss": round(vl, 4),
                          "grad_norm": round(float(gnorm), 3), "max_load_over_mean": round(imb, 3)})
            log("step %5d ep %5.2f  %5.0fs  lr %.2e  train %.4f  val %.4f  gnorm %.2f  load max/mean %.2f"
                % (step, step / steps_per_epoch, el, lr, loss.item(), vl, gnorm, imb))
            if vl < best[0]:
                snap = {k: v.detach().clone() for k, v in model.state_dict().items()}
                bias = [m.gate.e_score_correction_bias.detach().clone() for m in experts_of(model)]
                best = (vl, (snap, bias), step)
    train_s = time.time() - t_start
    log("trained %d steps in %.0fs; best validation loss %.4f at step %d" % (step, train_s, best[0], best[2]))
    model.load_state_dict(best[1][0])
    with torch.no_grad():
        for m, b in zip(experts_of(model), best[1][1]):
            m.gate.e_score_correction_bias.copy_(b)
    for moe in experts_of(model):
        del moe.experts.forward          # back to transformers' own expert code

    # ---- export
    os.makedirs(args.out, exist_ok=True)
    tensors = export_tensors(model)
    save_file(tensors, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(args.out, "config.json"), "w") as f:
        cfgd = model_config(tid, quantized=True)
        cfgd["transformers_version"] = transformers.__version__
        json.dump(cfgd, f, indent=2)
        f.write("\n")
    with open(os.path.join(args.out, "generation_config.json"), "w") as f:
        json.dump({"_from_model_config": False, "do_sample": True, "temperature": 0.8, "top_p": 0.95,
                   "eos_token_id": cfgd["eos_token_id"], "pad_token_id": cfgd["pad_token_id"],
                   "transformers_version": transformers.__version__}, f, indent=2)
        f.write("\n")
    if os.path.abspath(args.tokenizer) != os.path.abspath(args.out):
        for n in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(args.tokenizer, n), os.path.join(args.out, n))
    n_fp8 = sum(v.numel() for v in tensors.values() if v.dtype == torch.float8_e4m3fn)
    log("exported %d tensors, %d FP8 weights; files: %s" % (len(tensors), n_fp8, ", ".join(
        "%s %d" % (n, os.path.getsize(os.path.join(args.out, n))) for n in sorted(os.listdir(args.out)))))

    # ---- reference from the file as written
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    W = dequantized(load_file(os.path.join(args.out, "model.safetensors")))
    ref_cpu = build_reference(args.out, W, "cpu")
    probe = tok.encode("The jury said that the election was conducted fairly.", add_special_tokens=True).ids
    with torch.no_grad():
        hf = ref_cpu(input_ids=torch.tensor([probe]), use_cache=False).logits[0].float()
    mine = manual_logits(W, probe)
    d = (hf - mine).abs().max().item()
    log("reference check: transformers vs plain-torch forward, max |dlogit| %.3g (max |logit| %.3g)"
        % (d, hf.abs().max().item()))
    if d > 1e-3:
        raise RuntimeError("transformers and the plain forward disagree")
    with open(os.path.join(args.corpus, "heldout.txt"), encoding="utf-8") as f:
        held_text = f.read()
    # the excerpt: whole held-out lines (paragraphs) until the encoding reaches PPL_TOKENS
    lines = held_text.split("\n")
    k, excerpt, ids = 0, "", []
    while len(ids) < PPL_TOKENS:
        k += 1
        if k > len(lines):
            raise RuntimeError("held-out text is shorter than %d tokens" % PPL_TOKENS)
        excerpt = "\n".join(lines[:k]) + "\n"
        ids = tok.encode(excerpt, add_special_tokens=False).ids
    ids = ids[:PPL_TOKENS]

    nll_c, n_c = window_nll(ref_cpu, ids, PPL_CTX, "cpu")
    ref_gpu = build_reference(args.out, W, device)
    nll_g, n_g = window_nll(ref_gpu, ids, PPL_CTX, device)
    ppl = math.exp(nll_c / n_c)
    log("fixture: %d tokens, %d scored, PPL %.6f on the CPU, %.6f on the GPU"
        % (len(ids), n_c, ppl, math.exp(nll_g / n_g)))
    all_ids = tok.encode(held_text, add_special_tokens=False).ids
    nll_a, n_a = window_nll(ref_gpu, all_ids, PPL_CTX, device)
    log("whole held-out set: %d tokens, %d scored, PPL %.4f (c=%d)" % (len(all_ids), n_a, math.exp(nll_a / n_a),
                                                                     PPL_CTX))
    # the trained weights before FP8 rounding, for comparison (float32, TF32 off)
    model.eval()
    nll_t, n_t = window_nll(model, all_ids, PPL_CTX, device)
    ppl_unq = math.exp(nll_t / n_t)
    log("whole held-out set with the unquantised weights: PPL %.4f" % ppl_unq)
    del model
    os.makedirs(args.fixture, exist_ok=True)
    with open(os.path.join(args.fixture, "heldout.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write(excerpt)
    with open(os.path.join(args.fixture, "heldout.ids"), "w") as f:
        f.write(",".join(str(i) for i in ids) + "\n")
    with open(os.path.join(args.fixture, "ref.json"), "w") as f:
        json.dump({"n_ctx": PPL_CTX, "n_tokens": len(ids), "ppl": ppl, "nll_sum": nll_c, "n_scored": n_c}, f,
                  indent=2)
        f.write("\n")

    # ---- samples
    stop = set(cfgd["eos_token_id"])
    samples = []
    for name, add_sp in (("plain", False), ("[gMASK]<sop>", True)):
        p = tok.encode("The jury said", add_special_tokens=add_sp).ids
        for temp, seed in ((0.0, 0), (0.8, 1), (0.8, 2)):
            out = continue_text(ref_gpu, p, 60, device, temp, seed, stop)
            txt = tok.decode(out, skip_special_tokens=False)
            samples.append({"prompt": name, "temperature": temp, "seed": seed, "text": txt})
            log("sample (%s, T=%.1f, seed %d): The jury said%s" % (name, temp, seed, txt.replace("\n", "\\n")))

    if args.log:
        with open(args.log, "w") as f:
            json.dump({"params": n_params, "params_embed_lm_head": n_emb, "fp8_weights": n_fp8,
                       "train_tokens": train.numel(), "val_tokens": val.numel(), "steps": step,
                       "train_seconds": round(train_s, 1), "best_step": best[2], "best_val_loss": best[0],
                       "curve": curve, "fixture_ppl": ppl, "fixture_ppl_gpu": math.exp(nll_g / n_g),
                       "heldout_tokens": len(all_ids), "heldout_ppl": math.exp(nll_a / n_a),
                       "heldout_ppl_unquantised": ppl_unq,
                       "samples": samples, "ref_check_max_abs": d}, f, indent=2)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
