"""CPU baseline for the attention benchmarks: the same shapes through numpy.

Prints markdown rows beside `focal bench attention|window|decode`: causal attention
with 8 heads and head_dim 64 for N = 512 ... 16384, a causal sliding window of 512,
and one decode step over a context of 8192. Each case computes one block of query
rows at a time against only the keys that block can see, so memory stays O(N * block)
and the window costs O(N * W). GFLOP/s counts visible (query, key) pairs only, as the
Focal benchmark does.

Usage: python3 tests/baselines/attention_numpy.py [--quick]
"""

import sys
import time

import numpy as np

HEADS = 8
HEAD_DIM = 64
ROW_BLOCK = 512


def attend(q, k, v, window=None):
    """Causal attention over all heads; `window` keys per row when given."""
    heads, n, d = q.shape
    scale = 1.0 / np.sqrt(d)
    out = np.empty_like(q)
    for start in range(0, n, ROW_BLOCK):
        end = min(start + ROW_BLOCK, n)
        first_key = 0 if window is None else max(0, start - window + 1)
        scores = np.matmul(q[:, start:end], k[:, first_key:end].transpose(0, 2, 1)) * scale
        rows = np.arange(start, end)[:, None]
        keys = np.arange(first_key, end)[None, :]
        hidden = keys > rows
        if window is not None:
            hidden |= keys <= rows - window
        scores[:, hidden] = -np.inf
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        out[:, start:end] = np.matmul(scores, v[:, first_key:end])
    return out


def decode(q, k, v):
    """One query row per head at the last position: every key is visible."""
    scores = np.matmul(q, k.transpose(0, 2, 1)) / np.sqrt(q.shape[-1])
    scores -= scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    return np.matmul(weights, v)


def visible_pairs(n, window=None):
    if window is None:
        return n * (n + 1) / 2
    return sum(min(i + 1, window) for i in range(n))


def best_ms(fn, reps):
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times)


def main():
    quick = "--quick" in sys.argv
    rng = np.random.default_rng(1)
    flops_per_pair = 4.0 * HEADS * HEAD_DIM
    print(f"\n### numpy {np.__version__} baseline on the CPU, {HEADS} heads, head_dim {HEAD_DIM}, f32\n")
    print("| case | N | ms | GFLOP/s |\n|---|---|---|---|")
    sizes = [512, 1024, 2048] if quick else [512, 1024, 2048, 4096, 8192, 16384]
    for n in sizes:
        q, k, v = (rng.uniform(-1, 1, (HEADS, n, HEAD_DIM)).astype(np.float32) for _ in range(3))
        reps = 3 if n <= 4096 else 1
        ms = best_ms(lambda: attend(q, k, v), reps)
        gflops = visible_pairs(n) * flops_per_pair / (ms * 1e6)
        print(f"| causal | {n} | {ms:.1f} | {gflops:.2f} |")
        if n in (2048, 4096, 16384):
            ms = best_ms(lambda: attend(q, k, v, window=512), reps)
            gflops = visible_pairs(n, 512) * flops_per_pair / (ms * 1e6)
            print(f"| causal window 512 | {n} | {ms:.1f} | {gflops:.2f} |")
    context = 2048 if quick else 8192
    q = rng.uniform(-1, 1, (HEADS, 1, HEAD_DIM)).astype(np.float32)
    k, v = (rng.uniform(-1, 1, (HEADS, context, HEAD_DIM)).astype(np.float32) for _ in range(2))
    ms = best_ms(lambda: decode(q, k, v), 20)
    gflops = context * flops_per_pair / (ms * 1e6)
    print(f"| decode, q_len 1 | {context} | {ms:.2f} | {gflops:.2f} |")


if __name__ == "__main__":
    main()
