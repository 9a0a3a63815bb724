"""Model FLOPs per trained token, MFU, and this machine's measured fp32 matmul peak.

FLOPs per token (docs/performance.md has the derivation):
    full:        6·N + 12·L·S·d_attn
    LoRA/QLoRA:  4·N + 12·L·S·d_attn
N counts the weights of every matmul (all linear layers and the LM head; the embedding
lookup is no matmul, but with tied embeddings the head is that matrix and counts once).
The attention term is QKᵀ and PV, forward and backward, over the whole pack length S with no
causal discount (the PaLM/torchtitan convention). Recompute (activation checkpointing) is not
model FLOPs. The adapters' own FLOPs (6·N_lora) are left out; they are <1% here.
"""

from __future__ import annotations

import time

from tunebench.workloads import Workload

H100_BF16_PEAK = 989e12  # dense, SXM (issue 10; torchtitan's table)


def matmul_params(w: Workload) -> int:
    """N: the weights of every matmul of the model (decoder linears and the LM head)."""
    s = w.shape
    d = s.head_dim
    attn = s.hidden_size * d * (2 * s.num_attention_heads + 2 * s.num_key_value_heads)
    mlp = 3 * s.hidden_size * s.intermediate_size
    return s.num_hidden_layers * (attn + mlp) + s.vocab_size * s.hidden_size


def flops_per_token(w: Workload) -> float:
    """Model FLOPs per trained token: (6 if full else 4)·N + 12·L·S·d_attn."""
    s = w.shape
    attention = 12 * s.num_hidden_layers * w.seq_len * s.num_attention_heads * s.head_dim
    return (6 if w.method == "full" else 4) * matmul_params(w) + attention


def mfu(tokens_per_s: float, w: Workload, peak_flops: float) -> float:
    """Model FLOPs utilisation: tokens/s x FLOPs per token / the device's peak FLOP/s."""
    return tokens_per_s * flops_per_token(w) / peak_flops


def cpu_fp32_peak(n: int = 2048, repeats: int = 20) -> float:
    """Best fp32 FLOP/s of an n x n matmul with torch's threads (best of `repeats`).

    A measured peak, not the vendor's: on a shared machine it is what a matmul got at best
    while other processes ran, so CPU MFU is a fraction of what this machine could do then.
    """
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


if __name__ == "__main__":
    import json
    import sys

    import torch

    print(json.dumps({"cpu_fp32_peak": cpu_fp32_peak(), "threads": torch.get_num_threads(),
                      "torch": torch.__version__}), file=sys.stdout)
