#!/usr/bin/env python3
"""One mixture-of-experts LoRA step: tunelib against transformers + PEFT, same folder, same batch.

    python3 benchmarks/moe.py                      # Qwen3-MoE-shaped folder, 5 repeats
    python3 benchmarks/moe.py --repeats 9 --threads 1
    python3 benchmarks/moe.py --quick              # tiny shape, 1 repeat, 2 steps (what the test runs)

A random-init Qwen3-MoE folder (fp32; default 4 layers, hidden 512, 32 experts of 256, 4 per
token, vocabulary 4096; --quick: 2 layers, hidden 64, 4 experts) is written once with
transformers under --work. Each measurement is a fresh process (`--worker`), so its peak
resident memory (the kernel's VmHWM) is that library's alone: it loads the folder in fp32 on
the CPU, puts LoRA (rank 8, alpha 16) on q_proj, v_proj and every expert's gate/up/down
projections, and trains with AdamW on one fixed batch (--batch rows of --seq tokens), the loss
being cross-entropy plus 0.001 × the router load-balancing loss in both libraries.

tunelib: `from_pretrained` + `apply_peft(..., apply_lora_to_mlp=True)`, experts stacked and run
by the sorted-tokens loop on the CPU. transformers 5 + PEFT: `get_peft_model` with
target_modules [q_proj, v_proj, gate_proj, up_proj, down_proj], which PEFT turns into LoRA on the
fused expert parameters (`target_parameters`, gate_up at rank 16; see docs/models.md), and
`output_router_logits=True`. Each worker runs --warmup untimed steps, then --steps timed ones;
its step time is their median, in wall time and in the process's CPU time (less stretched by
other jobs on a shared machine; with --threads 1 the two agree on a quiet one). Repeats alternate which library goes first; the table gives the
medians over repeats of step time and peak memory, and of the per-repeat ratios tunelib ÷
transformers (range in brackets). The first step's loss is checked to agree (same weights, same
batch, adapters starting at zero).

Results go to --out (default benchmarks/results/moe-<time>/): runs.json and table.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

from side_by_side import interleaved, peak_rss_gib, run_process, step_rows

HERE = Path(__file__).resolve().parent
LIBRARIES = ("tunelib", "transformers")
SHAPES = {
    "default": dict(vocab_size=4096, hidden_size=512, intermediate_size=1024, moe_intermediate_size=256,
                    num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, head_dim=64,
                    num_experts=32, num_experts_per_tok=4),
    "quick": dict(vocab_size=256, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  num_experts=4, num_experts_per_tok=2),
}
RANK, ALPHA, AUX_COEF = 8, 16, 0.001


def write_model(folder: Path, shape: dict) -> Path:
    """The random Qwen3-MoE folder (once)."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    import transformers

    config = transformers.Qwen3MoeConfig(**shape, norm_topk_prob=True, max_position_embeddings=4096,
                                         router_aux_loss_coef=AUX_COEF, tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- one library, one process


def tunelib_step(folder: Path):
    import torch
    import torch.nn.functional as F

    from tunelib.checkpoint import from_pretrained
    from tunelib.models.moe import router_aux_loss
    from tunelib.peft import adapter_params, apply_peft, set_trainable

    model = from_pretrained(folder).train()
    apply_peft(model, lora_attn_modules=["q_proj", "v_proj"], apply_lora_to_mlp=True, lora_rank=RANK, lora_alpha=ALPHA)
    set_trainable(model)
    optimizer = torch.optim.AdamW(adapter_params(model).values(), lr=1e-4)

    def step(ids):
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()) + AUX_COEF * router_aux_loss(model)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def transformers_step(folder: Path):
    import peft
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).train()
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["q_proj", "v_proj", "gate_proj", "up_proj",
                                                                       "down_proj"])
    model = peft.get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(ids):
        # labels are shifted inside; the loss includes router_aux_loss_coef × aux_loss.
        loss = model(input_ids=ids, labels=ids, output_router_logits=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def worker(library: str, folder: Path, batch: int, seq: int, warmup: int, steps: int) -> dict:
    import torch

    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    ids = torch.randint(0, vocab, (batch, seq + 1), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)  # the adapters' first values: the same losses in every repeat
    step = (tunelib_step if library == "tunelib" else transformers_step)(folder)
    losses, times, cpu_times = [], [], []
    for i in range(warmup + steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        losses.append(step(ids))
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    return {"library": library, "step_s": statistics.median(times), "step_cpu_s": statistics.median(cpu_times),
            "peak_gib": peak_rss_gib(), "losses": losses}


# ---------------------------------------------------------------- the comparison


def run_worker(library: str, args, folder: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads)) if args.threads else dict(os.environ)
    cmd = [sys.executable, __file__, "--worker", library, "--folder", str(folder), "--batch", str(args.batch),
           "--seq", str(args.seq), "--warmup", str(args.warmup), "--steps", str(args.steps)]
    return run_process(library, cmd, env)


def table(runs: list[dict]) -> str:
    rows, repeats = step_rows(runs, "tunelib", "transformers")
    first = [r["losses"][0] for r in runs if r["repeat"] == 0]
    return "\n".join([
        "| | tunelib | transformers + PEFT | tunelib ÷ transformers |",
        "|---|---:|---:|---:|",
        *rows,
        "",
        f"{repeats} repeats; first-step loss difference {abs(first[0] - first[1]):.2e}.",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shape, 1 repeat, 1 warmup and 2 timed steps")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the workers")
    parser.add_argument("--work", type=Path, default=HERE / "results" / "moe-work")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", choices=LIBRARIES, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.folder, args.batch, args.seq, args.warmup, args.steps)))
        return 0
    if args.quick:
        args.repeats, args.warmup, args.steps, args.batch, args.seq = 1, 1, 2, 2, 32
    shape = "quick" if args.quick else "default"
    folder = write_model(args.work / f"qwen3-moe-{shape}", SHAPES[shape])
    out = args.out or HERE / "results" / f"moe-{dt.datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    runs = interleaved(LIBRARIES, args.repeats, lambda library: run_worker(library, args, folder))
    text = table(runs)
    (out / "runs.json").write_text(json.dumps({"shape": SHAPES[shape], "batch": args.batch, "seq": args.seq,
                                               "runs": runs}, indent=1))
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
