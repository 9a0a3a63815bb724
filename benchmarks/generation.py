#!/usr/bin/env python3
"""Generation speed: tunelib's `Generator` against transformers' `generate`, same folder, same prompt.

    python3 benchmarks/generation.py                          # greedy and top-p, 5 repeats
    python3 benchmarks/generation.py --repeats 9 --threads 1  # quieter on a busy machine
    python3 benchmarks/generation.py --compile                # also tunelib with compile=True
    python3 benchmarks/generation.py --sampler-only           # only the per-draw sampler timings

A random-init Llama-3-shaped Hugging Face folder (201M parameters, fp32, vocabulary 32000,
12 layers, hidden 1024, GQA 16/4) is written once under --work. Both libraries load it in
fp32 on the CPU, in this one process, and answer the same prompt (--prompt-tokens ids) with
exactly --new-tokens new tokens (no stop token): greedy, and sampled with temperature 0.6 and
top_p 0.9 (the `generate` recipe's defaults; transformers with top_k off, as tunelib's).

What is timed is one whole call, prompt included, as a user waits for it: tunelib's
`Generator.stream` drained to the end (the cache emptied before each call, so the prompt is
computed every time), transformers' `model.generate` (its default dynamic cache, SDPA
attention). tokens/s = new tokens / the call's wall time; tokens per CPU-s = new tokens / the
process's CPU time during the call (less stretched by other jobs on the machine). Every
library and mode is run once untimed first (allocator, caches, compile). Then each repeat
runs every (library, mode) once, the libraries' order rotating from one repeat to the next,
so a busy moment does not fall on one library only; each repeat gives one ratio tunelib ÷
transformers per mode, and the table shows the medians of the rates and of the ratios, with
the ratios' range in brackets. Greedy answers are checked to be the same tokens in both
libraries.

First, a table of the top-p sampler alone (milliseconds per draw, see `sampler_table`): a
random model's flat logits put most of the vocabulary in the nucleus, unlike a trained model's.

Results go to --out (default benchmarks/results/generation-<time>/): runs.json and table.md
(both tables).
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

from tunebench.assets import hf_config, make_weights, write_tokenizer  # noqa: E402
from tunebench.workloads import Shape  # noqa: E402

SHAPE = Shape(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
              num_attention_heads=16, num_key_value_heads=4)
SEED = 0
TEMPERATURE, TOP_P = 0.6, 0.9
MODES = ("greedy", "top_p")


def write_model(folder: Path) -> Path:
    """The model folder, written once (a stamp says for which shape)."""
    from safetensors.torch import save_file

    stamp = json.dumps({"shape": SHAPE.__dict__, "seed": SEED}, sort_keys=True)
    if (folder / "stamp.json").is_file() and (folder / "stamp.json").read_text() == stamp:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config(SHAPE, "fp32"), indent=1))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    save_file(make_weights(SHAPE, "fp32", SEED), str(folder / "model.safetensors"), metadata={"format": "pt"})
    write_tokenizer(folder, SHAPE.vocab_size)
    (folder / "stamp.json").write_text(stamp)
    return folder


def prompt_ids(n: int) -> list[int]:
    """A fixed prompt of n ids: BOS, then ordinary tokens."""
    g = torch.Generator().manual_seed(1)
    return [1] + torch.randint(3, SHAPE.vocab_size, (n - 1,), generator=g).tolist()


class Tunelib:
    """tunelib's generation loop, as `tune run generate` and `tune chat` drive it."""

    def __init__(self, folder: Path, compile: bool):
        from tunelib.generation import Generator, load_model

        self.name = "tunelib" + (" (compile)" if compile else "")
        kwargs = {"compile": True} if compile else {}
        self.generator = Generator(load_model(folder, dtype="fp32", device="cpu").model, **kwargs)

    def __call__(self, prompt: list[int], new_tokens: int, mode: str, seed: int) -> list[int]:
        from tunelib.generation import Sampling

        sampling = Sampling() if mode == "greedy" else Sampling(temperature=TEMPERATURE, top_p=TOP_P)
        self.generator.reset()  # the prompt is computed again, as in a new conversation
        rng = torch.Generator().manual_seed(seed)
        return list(self.generator.stream(prompt, max_new_tokens=new_tokens, sampling=sampling, generator=rng))


class Transformers:
    """transformers' `generate` with its defaults (dynamic cache, SDPA attention)."""

    def __init__(self, folder: Path):
        import transformers

        self.name = f"transformers {transformers.__version__}"
        self.model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.config = transformers.GenerationConfig

    def __call__(self, prompt: list[int], new_tokens: int, mode: str, seed: int) -> list[int]:
        sampled = {"do_sample": True, "temperature": TEMPERATURE, "top_p": TOP_P, "top_k": None}
        config = self.config(max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0,
                             **(sampled if mode == "top_p" else {"do_sample": False}))
        ids = torch.tensor([prompt])
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
        return out[0, len(prompt):].tolist()


def timed(runner, prompt: list[int], new_tokens: int, mode: str, seed: int) -> dict:
    """One call: new tokens per second of wall time and per second of this process's CPU time."""
    start, cpu = time.perf_counter(), time.process_time()
    tokens = runner(prompt, new_tokens, mode, seed)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    if len(tokens) != new_tokens:
        raise RuntimeError(f"{runner.name} gave {len(tokens)} tokens, not {new_tokens}")
    return {"tokens_per_s": new_tokens / seconds, "tokens_per_cpu_s": new_tokens / cpu_seconds}


def table(runs: list[dict], names: list[str], reference: str) -> str:
    lines = ["| mode | library | tokens/s | ÷ transformers | tokens per CPU-s | ÷ transformers, by CPU time |",
             "|---|---|---:|---:|---:|---:|"]
    for mode in MODES:
        for name in names:
            mine = [r for r in runs if r["mode"] == mode and r["library"] == name]
            cells = []
            for key in ("tokens_per_s", "tokens_per_cpu_s"):
                ratios = [r[key] / next(x[key] for x in runs if x["mode"] == mode and x["library"] == reference
                                        and x["repeat"] == r["repeat"]) for r in mine]
                cells += [f"{statistics.median(r[key] for r in mine):.1f}",
                          "1.00x" if name == reference else
                          f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"]
            lines.append(f"| {mode} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sampler_table(repeats: int) -> str:
    """Milliseconds per top-p draw (temperature 0.6, top_p 0.9) from one row of logits: tunelib's
    `sample` against what transformers' `generate` runs per token (its temperature and top-p
    warpers, softmax, multinomial), on flat logits (a random model's) and Zipf-like ones (a
    trained model's: a few likely tokens, a long tail), for Llama 2's and Llama 3's vocabularies."""
    import transformers

    from tunelib.generation import Sampling, sample

    warpers = transformers.LogitsProcessorList([transformers.TemperatureLogitsWarper(TEMPERATURE),
                                                transformers.TopPLogitsWarper(TOP_P)])

    def hf_sample(logits):
        probs = torch.softmax(warpers(None, logits), dim=-1)
        return torch.multinomial(probs, 1)

    sampling = Sampling(temperature=TEMPERATURE, top_p=TOP_P)
    lines = ["| vocabulary | logits | tunelib ms | transformers ms | transformers ÷ tunelib |", "|---:|---|---:|---:|---:|"]
    g = torch.Generator().manual_seed(0)
    for vocab in (32000, 128256):
        for kind, spread in (("flat (random model)", 0.0), ("Zipf-like (trained model)", 1.5)):
            ranks = torch.arange(1, vocab + 1).float()
            logits = (-spread * ranks.log() + torch.randn(1, vocab, generator=g))[:, torch.randperm(vocab, generator=g)]
            times = {"tunelib": [], "transformers": []}
            for _ in range(repeats):
                for name, draw in (("tunelib", lambda: sample(logits, sampling, g)), ("transformers", lambda: hf_sample(logits))):
                    start = time.perf_counter()
                    for _ in range(20):
                        draw()
                    times[name].append((time.perf_counter() - start) / 20 * 1e3)
            ours, theirs = statistics.median(times["tunelib"]), statistics.median(times["transformers"])
            lines.append(f"| {vocab} | {kind} | {ours:.3f} | {theirs:.3f} | {theirs / ours:.2f}x |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompt-tokens", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="also run tunelib with compile=True")
    parser.add_argument("--no-eager", action="store_true", help="leave out tunelib without compile")
    parser.add_argument("--sampler-only", action="store_true", help="only the per-draw sampler timings")
    parser.add_argument("--work", type=Path, default=HERE / "results" / "generation-work")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or HERE / "results" / f"generation-{dt.datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    sampler = sampler_table(args.repeats)
    print(sampler, flush=True)
    if args.sampler_only:
        (out / "sampler.md").write_text(sampler + "\n")
        return 0
    folder = write_model(args.work / "model")
    prompt = prompt_ids(args.prompt_tokens)

    runners = [Transformers(folder)]
    runners += [] if args.no_eager else [Tunelib(folder, compile=False)]
    runners += [Tunelib(folder, compile=True)] if args.compile else []
    reference = runners[0].name
    greedy = {}
    for runner in runners:  # untimed: allocator, caches, compile
        for mode in MODES:
            warm_s = time.perf_counter()
            tokens = runner(prompt, args.new_tokens, mode, SEED)
            print(f"warm-up {runner.name} {mode}: {time.perf_counter() - warm_s:.1f} s", flush=True)
            if mode == "greedy":
                greedy[runner.name] = tokens
    same_greedy = {name: tokens == greedy[reference] for name, tokens in greedy.items()}
    print(f"greedy tokens equal to {reference}'s: {same_greedy}", flush=True)

    runs = []
    for repeat in range(args.repeats):
        order = runners[repeat % len(runners):] + runners[:repeat % len(runners)]
        for mode in MODES:
            for runner in order:
                runs.append({"repeat": repeat, "mode": mode, "library": runner.name,
                             **timed(runner, prompt, args.new_tokens, mode, SEED + repeat)})
                print(json.dumps(runs[-1]), flush=True)

    names = [r.name for r in runners]
    text = table(runs, names, reference)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
            "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "repeats": args.repeats,
            "shape": SHAPE.__dict__, "greedy_tokens_equal": same_greedy, "when": dt.datetime.now().isoformat()}
    (out / "runs.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    (out / "table.md").write_text(text + "\n\n" + sampler + "\n")
    print(text)
    print(f"load average after: {os.getloadavg()}; greedy tokens equal: {same_greedy}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
