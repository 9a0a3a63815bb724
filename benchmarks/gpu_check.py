#!/usr/bin/env python3
"""One command that checks tunelib on one GPU and prints one table: under 8 minutes on an H100/H200.

    python3 benchmarks/gpu_check.py                      # on a CUDA machine: everything below
    python3 benchmarks/gpu_check.py --quick              # tiny shapes, any device (what the CPU tests run)
    python3 benchmarks/gpu_check.py --skip training      # leave a section out (attention, syncs, training)

1. The machine: torch, CUDA, cuDNN, the GPU, and which optional packages import.
2. Attention at Llama-3.1-8B shapes (32 heads, 8 key/value heads, head 128), forward and
   backward, T = 2048 and 8192: plain causal (SDPA), packed documents through the dense mask
   (SDPA) and through flex attention, a sliding window and Gemma 2's soft-capping, each dense
   and flex; every output and gradient checked for NaN/inf, each flex result compared with its
   dense twin.
3. A real training step, compiled (LoRA, packed): graph breaks and recompiles counted by
   torch._dynamo, host syncs counted by CUDA's sync debug mode.
4. Training: Llama-3.1-8B LoRA and QLoRA, Llama-3.2-1B full fine-tuning (random weights made
   here, packed 2048 x 2, activation checkpointing, compile, fused AdamW): tokens/s (median of
   the timed steps), MFU (formula in tunebench/flops.py), peak allocated and reserved memory,
   and the peak `tune run` estimated before loading (tunelib/training/estimate.py) against it.

Nothing is downloaded. Results: --out (default benchmarks/results/gpu-check-<time>/):
gpu_check.json and table.md. It needs torch, tunelib's own packages (torchao, omegaconf,
safetensors, tokenizers, datasets, ...) and nothing else; on a bare CUDA image carry their wheels.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import io
import json
import re
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from tunebench import assets, data, flops  # noqa: E402
from tunebench import report as figures_of  # noqa: E402
from tunebench.driver_io import Job  # noqa: E402
from tunebench.drivers import run_tunelib  # noqa: E402
from tunebench.workloads import TINY, WORKLOADS, Workload  # noqa: E402

OPTIONAL = ("torchao", "omegaconf", "safetensors", "tokenizers", "datasets", "triton", "transformers")
TRAINING = ("gpu-8b-lora", "gpu-8b-qlora", "gpu-1b-full")


# -- 1. the machine ------------------------------------------------------------------------------


def machine() -> dict:
    """Versions and the device: what a figure was measured on."""
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "packages": {}}
    for name in OPTIONAL:
        try:
            info["packages"][name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as e:  # noqa: BLE001 - a package that fails to import is a finding, not a crash
            info["packages"][name] = f"missing ({type(e).__name__})"
    return info


# -- 2. attention --------------------------------------------------------------------------------


def attention_cases(quick: bool) -> list[dict]:
    """(name, sequence length, config changes, whether documents are packed) of each timed case."""
    lengths = (256,) if quick else (2048, 8192)
    cases = []
    for t in lengths:
        window = t // 2
        cases += [
            {"case": "causal", "T": t, "config": {}, "packed": False, "backends": ("sdpa",)},
            {"case": "packed", "T": t, "config": {}, "packed": True, "backends": ("sdpa", "flex")},
            {"case": f"sliding window {window}", "T": t, "config": {"sliding_window": window}, "packed": False,
             "backends": ("sdpa", "flex")},
            {"case": "soft-cap 50", "T": t, "config": {"attn_logit_softcapping": 50.0}, "packed": False,
             "backends": ("sdpa", "flex")},
        ]
    return cases


def attention_model(device: torch.device, dtype: torch.dtype, quick: bool, changes: dict):
    """One decoder layer with Llama-3.1-8B's attention (tiny MLP and vocabulary), on `device`."""
    from tunelib.models.build import build
    from tunelib.models.config import DecoderConfig

    heads, kv, head = (4, 2, 32) if quick else (32, 8, 128)
    config = DecoderConfig(architecture="LlamaForCausalLM", vocab_size=256, hidden_size=heads * head,
                           intermediate_size=256, num_hidden_layers=1, num_attention_heads=heads,
                           num_key_value_heads=kv, head_dim=head, max_position_embeddings=16384, **changes)
    model = build(config, {}).to_empty(device=device).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
        for module in model.modules():  # RoPE's computed buffers
            if hasattr(module, "reset_parameters") and type(module).__name__ == "RotaryEmbedding":
                module.reset_parameters()
    return model


def packed_ids(t: int, device: torch.device, mean_doc: int = 400) -> torch.Tensor:
    """Document ids (1, t) of documents of about `mean_doc` tokens, as packing makes them."""
    lengths, left, g = [], t, torch.Generator().manual_seed(0)
    while left > 0:
        n = min(left, max(16, int(torch.randint(mean_doc // 2, mean_doc * 3 // 2, (1,), generator=g))))
        lengths.append(n)
        left -= n
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))[None].to(device)


def time_attention(model, t: int, packed: bool, device: torch.device, repeats: int) -> tuple[float, list]:
    """Median seconds of one forward+backward of `model.hidden` on t tokens; and (out, grads)."""
    ids = torch.randint(0, 256, (1, t), generator=torch.Generator().manual_seed(0)).to(device)  # same for each backend
    docs = packed_ids(t, device) if packed else None
    times, result = [], None
    for _ in range(repeats + 1):  # the first is warm-up (and compiles flex on a GPU)
        model.zero_grad(set_to_none=True)
        start = _now(device)
        out = model.hidden(ids, document_ids=docs)
        out.float().square().mean().backward()
        times.append(_now(device) - start)
        result = (out.detach().float(), [p.grad.float() for p in model.parameters() if p.grad is not None])
    return statistics.median(times[1:]), result


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def attention(device: torch.device, dtype: torch.dtype, quick: bool, repeats: int) -> list[dict]:
    from tunelib.models import flex

    rows = []
    for case in attention_cases(quick):
        model = attention_model(device, dtype, quick, case["config"])
        results = {}
        for backend in case["backends"]:
            model.attention_backend = backend
            row = {"case": case["case"], "T": case["T"], "backend": backend}
            problem = flex.backward_problem(device.type) if backend == "flex" else None
            if problem is not None:  # torch 2.13 on CPU: the row says why, the others go on
                rows.append({**row, "skipped": problem})
                continue
            try:
                seconds, (out, grads) = time_attention(model, case["T"], case["packed"], device, repeats)
                finite = bool(torch.isfinite(out).all()) and all(bool(torch.isfinite(g).all()) for g in grads)
                row.update(ms=1000 * seconds, finite=finite)
                results[backend] = out
            except Exception as e:  # noqa: BLE001 - e.g. out of memory: the row says so, the others go on
                row.update(error=f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
            rows.append(row)
        if "sdpa" in results and "flex" in results:
            rows[-1]["max_diff_to_sdpa"] = float((results["flex"] - results["sdpa"]).abs().max())
            rows[-1]["speedup_over_sdpa"] = rows[-2]["ms"] / rows[-1]["ms"]
        del model
        _free(device)
    return rows


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# -- 3. graph breaks and host syncs ---------------------------------------------------------------


def breaks_and_syncs(device: torch.device, out: Path, quick: bool) -> dict:
    """Compile a LoRA run on a small packed model; count graph breaks, recompiles and host syncs."""
    import torch._dynamo.utils as dynamo_utils

    w = _small(TINY, "lora", device, compile=device.type == "cuda" or not quick)
    job = _prepare(w, out / "syncs", "syncs")
    dynamo_utils.counters.clear()
    syncs = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")  # every synchronizing call warns
        try:
            _train(job, on_step=lambda: syncs.append(_sync_warnings(caught)))
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
    per_step = [b - a for a, b in zip([0, *syncs], syncs)]
    return {"graph_breaks": sum(dynamo_utils.counters["graph_break"].values()),
            "graph_break_reasons": sorted(dynamo_utils.counters["graph_break"])[:10],
            "recompiles": dynamo_utils.counters["stats"].get("unique_graphs", 0),
            "host_syncs_per_step": per_step if device.type == "cuda" else "CUDA only"}


def _sync_warnings(caught) -> int:
    return sum("synchroniz" in str(w.message).lower() for w in caught)


# -- 4. training ---------------------------------------------------------------------------------


def _small(shape, method: str, device: torch.device, compile: bool) -> Workload:
    return Workload(name=f"check-{method}", shape=shape, method=method, device=device.type,
                    dtype="bf16" if device.type == "cuda" else "fp32", seq_len=256, batch_size=2,
                    warmup_steps=1, timed_steps=2, compile=compile, activation_checkpointing=True, mean_doc_len=64)


def _prepare(w: Workload, root: Path, name: str) -> dict:
    """The model folder and packs of `w` under `root`; returns the job's paths."""
    root.mkdir(parents=True, exist_ok=True)
    assets.make_model_folder(root / "assets", w)
    packs = data.make_packs(vocab_size=w.shape.vocab_size, seq_len=w.seq_len, n_packs=w.steps * w.batch_size,
                            mean_doc_len=w.mean_doc_len, seed=w.seed)
    data.save(root / f"{name}.packs.json", w.seq_len, packs)
    return {"workload": w, "assets": root / "assets", "packs": root / f"{name}.packs.json", "workdir": root / "run"}


def _train(job: dict, on_step=None) -> dict:
    """The tunelib benchmark driver in this process; returns its figures (tunebench.report's)."""
    w = job["workload"]
    result = job["workdir"].parent / "result.json"
    shutil.rmtree(job["workdir"], ignore_errors=True)  # tunelib refuses a used output_dir
    job["workdir"].mkdir(parents=True)
    run_tunelib.run(Job(w, job["assets"] / "model", job["assets"] / "lora_init.safetensors", job["packs"],
                        job["workdir"], result), on_step=on_step)
    _, packs = data.load(job["packs"])
    tokens = figures_of.step_tokens(packs, w.batch_size, w.steps)
    return figures_of.run_figures(json.loads(result.read_text()), w, tokens)


def training(names: list[str], device: torch.device, out: Path, quick: bool) -> list[dict]:
    rows = []
    for name in names:
        w = WORKLOADS[name]
        if quick:
            w = _small(TINY, w.method, device, compile=False)
        row = {"workload": name, "method": w.method}
        try:
            _free(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):  # to read the estimate `tune run` prints at start
                result = _train(_prepare(w, out / name, name))
            print(printed.getvalue(), end="")
            tps = result["tokens_per_s"]
            peak = flops.H100_BF16_PEAK if device.type == "cuda" else flops.cpu_fp32_peak()
            memory = result["memory"]
            row.update(tokens_per_second=tps, mfu=flops.mfu(tps, w, peak),
                       peak_allocated_gib=memory.get("peak_allocated_gib", memory.get("peak_rss_gib")),
                       peak_reserved_gib=memory.get("peak_reserved_gib"), losses=result["losses"],
                       estimate_gib=_printed_estimate(printed.getvalue()))
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: the row says so, the others go on
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        rows.append(row)
    return rows


def _printed_estimate(stdout: str) -> float | None:
    """The peak memory `build_run` estimated before loading (tunelib.training.estimate), in GiB."""
    match = re.search(r"^Estimated peak memory: ([\d.]+) GiB", stdout, re.MULTILINE)
    return float(match.group(1)) if match else None


# -- the report ----------------------------------------------------------------------------------


def table(report: dict) -> str:
    m = report["machine"]
    lines = [f"## tunelib GPU check: {m['device']}, torch {m['torch']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}", ""]
    if "attention" in report:
        lines += ["| attention | T | backend | ms fwd+bwd | finite | flex ÷ sdpa speed | max diff |",
                  "|---|---:|---|---:|---|---:|---:|"]
        for r in report["attention"]:
            ms = f"{r['ms']:.2f}" if "ms" in r else r.get("error", r.get("skipped", ""))
            speed = f"{r['speedup_over_sdpa']:.2f}x" if "speedup_over_sdpa" in r else ""
            diff = f"{r['max_diff_to_sdpa']:.2e}" if "max_diff_to_sdpa" in r else ""
            lines.append(f"| {r['case']} | {r['T']} | {r['backend']} | {ms} | {r.get('finite', '')} | {speed} | {diff} |")
        lines.append("")
    if "syncs" in report:
        s = report["syncs"]
        lines += [f"Compiled LoRA step: {s['graph_breaks']} graph breaks, {s['recompiles']} graphs, "
                  f"host syncs per step {s['host_syncs_per_step']}", ""]
    if "training" in report:
        lines += ["| workload | tokens/s | MFU | peak allocated GiB | peak reserved GiB | estimate GiB "
                  "| estimate ÷ measured |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in report["training"]:
            if "error" in r:
                lines.append(f"| {r['workload']} | {r['error']} | | | | | |")
                continue
            alloc, reserved, estimate = r["peak_allocated_gib"], r["peak_reserved_gib"], r.get("estimate_gib")
            measured = reserved if reserved is not None else alloc  # reserved on a GPU, resident memory on a CPU
            ratio = f"{estimate / measured:.2f}" if estimate and measured else "n/a"
            lines.append(f"| {r['workload']} | {r['tokens_per_second']:,.0f} | {100 * r['mfu']:.1f}% | "
                         f"{_gib(alloc)} | {_gib(reserved)} | {_gib(estimate)} | {ratio} |")
    return "\n".join(lines)


def _gib(value) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "n/a"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny shapes on whatever device there is (CPU tests)")
    p.add_argument("--skip", nargs="*", default=[], choices=["attention", "syncs", "training"])
    p.add_argument("--workloads", nargs="*", default=list(TRAINING), choices=list(TRAINING),
                   help="the training workloads to measure")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per attention case")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not a.quick:
        raise SystemExit("no CUDA device: run on a GPU, or with --quick for the tiny check")
    out = a.out or HERE / "results" / f"gpu-check-{dt.datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    report = {"machine": machine(), "quick": a.quick}
    started = time.perf_counter()
    if "attention" not in a.skip:
        report["attention"] = attention(device, dtype, a.quick, 1 if a.quick else a.repeats)
    if "syncs" not in a.skip:
        report["syncs"] = breaks_and_syncs(device, out, a.quick)
    if "training" not in a.skip:
        report["training"] = training(a.workloads, device, out, a.quick)
    report["seconds"] = time.perf_counter() - started
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    text = table(report)
    (out / "table.md").write_text(text + "\n")
    print(text)
    print(f"\n{report['seconds']:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
