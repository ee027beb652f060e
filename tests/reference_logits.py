#!/usr/bin/env python3
"""Write tests/fixtures/smollm2_reference.json: an independent reference for the model tests.

The engine is checked against this file, so nothing here shares code with it. The GGUF is
read with the `gguf` package (llama.cpp's reader) and tokenised by a small byte-level BPE
written below. A float32 numpy forward pass then runs it in the Hugging Face conventions
(Q and K rows un-permuted, rotate-half RoPE), where the engine uses llama.cpp's.

The fixture holds token ids for a list of texts, and for two prompts the top 20 logits of
the last position plus every 64th logit of the vocabulary.

How it was made (Python 3, gguf 0.19.0, numpy 2.4.6, regex 2026.5.9):

    pip install gguf numpy regex
    just fetch-model
    python3 tests/reference_logits.py
"""

import hashlib
import json
import pathlib

import gguf
import numpy as np
import regex

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
OUTPUT = ROOT / "tests" / "fixtures" / "smollm2_reference.json"

PROMPTS = [
    "The capital of France is",
    "def add(a, b):\n    return a + b  # 2024 café",
]
TOKENIZER_TEXTS = [
    "Hello, world!",
    "The year 2024 has 366 days.",
    "Café crème brûlée, naïve façade",
    "Emoji: 🙂🚀 and 👩‍💻 too",
    "def f(x):\n    return x**2  # square\n",
    "<|im_start|>user\nHi there<|im_end|>\n",
    "   leading spaces and\ttabs\n\nnew lines",
]
TOP = 20
STRIDE = 64

# GPT-2's pre-tokenisation pattern, which byte-level BPE applies after splitting digits.
PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)


def bytes_to_unicode():
    """GPT-2's reversible map from bytes to printable characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


class Bpe:
    def __init__(self, reader):
        field = reader.fields
        self.tokens = [str(t) for t in field["tokenizer.ggml.tokens"].contents()]
        types = field["tokenizer.ggml.token_type"].contents()
        merges = field["tokenizer.ggml.merges"].contents()
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        self.ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(merges)}
        self.special = [t for t, k in zip(self.tokens, types) if k == 3]
        self.byte_map = bytes_to_unicode()

    def encode_word(self, word):
        parts = [self.byte_map[b] for b in word.encode("utf-8")]
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, i = min(pairs)
            if rank == 1 << 30:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        return [self.ids[p] for p in parts]

    def encode(self, text):
        ids = []
        special = "(" + "|".join(regex.escape(s) for s in self.special) + ")"
        for chunk in regex.split(special, text):
            if not chunk:
                continue
            if chunk in self.special:
                ids.append(self.ids[chunk])
                continue
            # Digits are split one by one before the byte-level pattern runs.
            for piece in regex.split(r"(\p{N})", chunk):
                for word in PATTERN.findall(piece):
                    ids.extend(self.encode_word(word))
        return ids


def load_weights(reader):
    weights = {}
    for tensor in reader.tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        weights[tensor.name] = data.reshape([int(d) for d in reversed(tensor.shape)])
    return weights


def unpermute(w, heads):
    """Undo llama.cpp's Q/K row permutation, giving the rotate-half layout."""
    rows, cols = w.shape
    d = rows // heads
    return w.reshape(heads, d // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def forward(weights, meta, ids):
    heads, kv_heads, eps, theta = meta["heads"], meta["kv_heads"], meta["eps"], meta["theta"]
    x = weights["token_embd.weight"][ids]
    n, hidden = x.shape
    d = hidden // heads
    inv_freq = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    angles = np.outer(np.arange(n), inv_freq)
    cos = np.cos(np.concatenate([angles, angles], axis=-1)).astype(np.float32)
    sin = np.sin(np.concatenate([angles, angles], axis=-1)).astype(np.float32)

    def rope(t):
        half = t[..., : d // 2], t[..., d // 2 :]
        rotated = np.concatenate([-half[1], half[0]], axis=-1)
        return t * cos[:, None, :] + rotated * sin[:, None, :]

    mask = np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)
    for layer in range(meta["layers"]):
        w = lambda part: weights[f"blk.{layer}.{part}.weight"]
        h = rms_norm(x, w("attn_norm"), eps)
        q = (h @ unpermute(w("attn_q"), heads).T).reshape(n, heads, d)
        k = (h @ unpermute(w("attn_k"), kv_heads).T).reshape(n, kv_heads, d)
        v = (h @ w("attn_v").T).reshape(n, kv_heads, d)
        q, k = rope(q), rope(k)
        group = heads // kv_heads
        k = np.repeat(k, group, axis=1)
        v = np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(d) + mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", probs, v).reshape(n, heads * d)
        x = x + attn @ w("attn_output").T
        h = rms_norm(x, w("ffn_norm"), eps)
        gate = h @ w("ffn_gate").T
        x = x + (gate / (1 + np.exp(-gate)) * (h @ w("ffn_up").T)) @ w("ffn_down").T
    x = rms_norm(x, weights["output_norm.weight"], eps)
    return x[-1] @ weights["token_embd.weight"].T


def main():
    reader = gguf.GGUFReader(MODEL)
    field = lambda key: reader.fields[key].contents()
    meta = {
        "layers": int(field("llama.block_count")),
        "heads": int(field("llama.attention.head_count")),
        "kv_heads": int(field("llama.attention.head_count_kv")),
        "eps": float(field("llama.attention.layer_norm_rms_epsilon")),
        "theta": float(field("llama.rope.freq_base")),
    }
    bpe = Bpe(reader)
    weights = load_weights(reader)
    prompts = []
    for text in PROMPTS:
        ids = bpe.encode(text)
        logits = forward(weights, meta, np.array(ids))
        top = np.argsort(-logits)[:TOP]
        prompts.append(
            {
                "text": text,
                "ids": ids,
                "top": [[int(i), round(float(logits[i]), 4)] for i in top],
                "stride": STRIDE,
                "strided_logits": [round(float(v), 4) for v in logits[::STRIDE]],
            }
        )
        print(f"{text!r}: {len(ids)} tokens, top {[bpe.tokens[i] for i in top[:5]]}")
    fixture = {
        "model": MODEL.name,
        "model_sha256": hashlib.sha256(MODEL.read_bytes()).hexdigest(),
        "made_by": "tests/reference_logits.py (gguf + numpy, float32, dequantised weights)",
        "tokenizer": [{"text": t, "ids": bpe.encode(t)} for t in TOKENIZER_TEXTS],
        "prompts": prompts,
    }
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
