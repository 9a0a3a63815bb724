#!/usr/bin/env python3
"""Does quantization-aware training keep more of a fine-tune through int4 quantization? A loss table.

    python3 benchmarks/qat.py                   # 3 seeds: 13 minutes on 2 busy CPU cores
    python3 benchmarks/qat.py --seeds 3 4 --steps 250 --group 128
    python3 benchmarks/qat.py --quick           # 1 seed, few steps: checks that it runs

A tiny random-init Llama (2 layers, hidden 128, vocabulary 64; fp32 on the CPU) first learns a
synthetic language (a random chain in which each token depends on the one two places back, with
peaked distributions) for --warmup steps. From that one starting point two arms train --steps more steps on the same
batches with the same AdamW: plain fine-tuning, and QAT (tunelib.quantization.qat with the
quantizer below, fake quantization on from the first step). Both are then quantized with that
quantizer, exactly as `tune run quantize` does (torchao's quantize_ on every linear inside the
decoder layers), and their loss is measured on held-out sequences of the same chain:

    plain fp     the plain fine-tune, unquantized: the loss to keep
    plain + PTQ  the plain fine-tune, quantized: what quantizing without QAT gives
    QAT fp       the QAT fine-tune with fake quantization off (what its saved folder holds)
    QAT + PTQ    the QAT fine-tune, quantized: what the QAT recipes are for

Quantizers: 8da4w (Int8DynActInt4WeightQATQuantizer: int8 dynamic activations, int4 weights in
groups of 32) is torchao's real quantized model on the CPU. int4 weight-only
(Int4WeightOnlyQATQuantizer) quantizes only on CUDA (tinygemm); on the CPU its "+ PTQ" rows are
the fake-quantized model, marked "(simulated)". 8da2w (2-bit weights, defined here only) rounds
harder: a model this small loses little to int4, so it shows what QAT does where rounding costs
what int4 costs a large model. Not a timing benchmark.

Results go to --out (default benchmarks/results/qat-<time>/): runs.json and table.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPE = dict(vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False)
GROUP = 32
ROWS = ("plain fp", "plain + PTQ", "QAT fp", "QAT + PTQ")


def language(seed: int, vocab: int, sharpness: float):
    """A random chain with a lag of two, (vocab, vocab): token t is drawn from the row of token t-2,
    which puts most mass on a few tokens (more so the higher `sharpness`). Predicting it takes
    attention to the token before last, carried through v_proj, o_proj and the MLPs: the task lives
    in the decoder layers' linears, which are what quantization rounds (a plain first-order chain is
    learnt by the embedding and the output layer alone, which stay unquantized)."""
    import torch

    g = torch.Generator().manual_seed(10_000 + seed)
    logits = torch.randn(vocab, vocab, generator=g) * sharpness
    return torch.softmax(logits, dim=-1)


def sample(chain, count: int, length: int, generator):
    import torch

    tokens = torch.empty(count, length, dtype=torch.long)
    tokens[:, :2] = torch.randint(0, chain.shape[0], (count, 2), generator=generator)
    for t in range(2, length):
        tokens[:, t] = torch.multinomial(chain[tokens[:, t - 2]], 1, generator=generator).squeeze(1)
    return tokens


def make_model(folder: Path, seed: int):
    import torch
    import transformers

    import tunelib.checkpoint

    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE)).save_pretrained(folder / f"init-{seed}")
    return tunelib.checkpoint.from_pretrained(folder / f"init-{seed}", dtype=torch.float32)


def loss(model, ids):
    import torch.nn.functional as F

    logits = model(ids[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def train(model, batches, lr: float):
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for ids in batches:
        loss(model, ids).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()


def evaluate(model, ids) -> float:
    import torch

    with torch.no_grad():
        return float(loss(model, ids))


def quantized(model, quantizer, simulate: bool):
    """A quantized copy of `model`: torchao's real quantization, or (simulate) its fake quantization."""
    import copy

    from torchao.quantization import quantize_

    from tunelib.quantization import qat

    model = qat.remove(copy.deepcopy(model))  # plain linears (remove leaves an unprepared model as it is)
    if simulate:
        return qat.prepare(model, quantizer)
    targets = set(qat.target_linears(model))
    quantize_(model, quantizer.torchao_config(), filter_fn=lambda module, name: name in targets)
    return model


def int2_quantizer(group: int):
    """8da2w, for this benchmark only: int8 activations and 2-bit weights, rounding harsh enough that
    a tiny model loses to it what a large one loses to int4 (tunelib ships no 2-bit quantizer)."""
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, PerGroup
    from torchao.quantization.qat import IntxFakeQuantizeConfig

    from tunelib.quantization import Int8DynActInt4WeightQuantizer

    class Int8DynActInt2Weight(Int8DynActInt4WeightQuantizer):
        def torchao_config(self):
            return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int2,
                                                         weight_granularity=PerGroup(self.groupsize))

        def fake_quantize_configs(self):
            activation = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
            return activation, IntxFakeQuantizeConfig(torch.int2, granularity=PerGroup(self.groupsize),
                                                      is_symmetric=True)

    return Int8DynActInt2Weight(groupsize=group)


def one_seed(seed: int, args, folder: Path, quantizers: dict) -> dict:
    import copy

    import torch

    from tunelib.quantization import qat

    chain = language(seed, SHAPE["vocab_size"], args.sharpness)
    g = torch.Generator().manual_seed(seed)
    heldout = sample(chain, 64, args.length, g)
    start = make_model(folder, seed)
    train(start, [sample(chain, args.batch, args.length, g) for _ in range(args.warmup)], args.lr)
    batches = [sample(chain, args.batch, args.length, g) for _ in range(args.steps)]
    out = {"seed": seed, "start": evaluate(start, heldout)}
    plain = copy.deepcopy(start)
    train(plain, batches, args.lr)
    for label, (quantizer, simulate) in quantizers.items():
        trained = qat.prepare(copy.deepcopy(start), quantizer)
        torch.manual_seed(seed)
        train(trained, batches, args.lr)
        qat.set_fake_quant(trained, False)
        out[label] = {"plain fp": evaluate(plain, heldout),
                      "plain + PTQ": evaluate(quantized(plain, quantizer, simulate), heldout),
                      "QAT fp": evaluate(trained, heldout),
                      "QAT + PTQ": evaluate(quantized(trained, quantizer, simulate), heldout)}
        print(f"seed {seed} {label}: " + ", ".join(f"{k} {v:.4f}" for k, v in out[label].items()), flush=True)
    return out


def table(runs: list[dict], quantizers: dict) -> str:
    lines = ["| quantizer | plain fp | plain + PTQ | QAT fp | QAT + PTQ | gap plain (PTQ − fp) "
             "| gap QAT (QAT+PTQ − plain fp) | QAT ÷ plain gap | seeds where QAT's is smaller |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, (_, simulate) in quantizers.items():
        mean = {row: statistics.mean(r[label][row] for r in runs) for row in ROWS}
        plain_gaps = [r[label]["plain + PTQ"] - r[label]["plain fp"] for r in runs]
        qat_gaps = [r[label]["QAT + PTQ"] - r[label]["plain fp"] for r in runs]
        ratio = statistics.mean(qat_gaps) / statistics.mean(plain_gaps)
        smaller = sum(q < p for q, p in zip(qat_gaps, plain_gaps))
        name = label + (" (simulated)" if simulate else "")
        lines.append(f"| {name} | {mean['plain fp']:.4f} | {mean['plain + PTQ']:.4f} | {mean['QAT fp']:.4f} | "
                     f"{mean['QAT + PTQ']:.4f} | {statistics.mean(plain_gaps):+.4f} | {statistics.mean(qat_gaps):+.4f} "
                     f"| {ratio:.2f} | {smaller} of {len(runs)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--warmup", type=int, default=150, help="steps learning the language before the two arms")
    parser.add_argument("--steps", type=int, default=100, help="fine-tuning steps of each arm")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--sharpness", type=float, default=3.0, help="spread of the chain's next-token logits")
    parser.add_argument("--group", type=int, default=GROUP, help="int4 group size (32, 64 or 128)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 20 + 10 steps")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.warmup, args.steps = args.seeds[:1], 20, 10
    warnings.filterwarnings("ignore")
    import torch

    from tunelib.quantization import Int4WeightOnlyQATQuantizer, Int8DynActInt4WeightQATQuantizer

    torch.set_num_threads(args.threads)
    quantizers = {"8da4w": (Int8DynActInt4WeightQATQuantizer(groupsize=args.group), False),
                  "int4 weight-only": (Int4WeightOnlyQATQuantizer(groupsize=args.group), True),
                  "8da2w (benchmark only)": (int2_quantizer(args.group), False)}
    out = args.out or HERE / "results" / f"qat-{dt.datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    runs = [one_seed(seed, args, out / "models", quantizers) for seed in args.seeds]
    text = (f"Loss on held-out sequences, mean of seeds {args.seeds} ({args.warmup} steps learning the language, "
            f"then {args.steps} fine-tuning steps per arm; lr {args.lr}, chain sharpness {args.sharpness}, "
            f"groups of {args.group}). A gap is the quantized model's loss above the plain fine-tune's "
            f"unquantized loss; 'QAT ÷ plain gap' divides the mean gaps (below 1: QAT keeps more).\n\n{table(runs, quantizers)}\n")
    (out / "runs.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs},
                                              indent=1) + "\n")
    (out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
