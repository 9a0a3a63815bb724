#!/usr/bin/env python3
"""One LoRA DPO step: tunelib against TRL's DPOTrainer (+ PEFT), same folder, same pairs.

    python3 benchmarks/dpo.py                      # Llama-shaped folder, 5 repeats
    python3 benchmarks/dpo.py --repeats 9 --threads 1
    python3 benchmarks/dpo.py --quick              # tiny shape, 1 repeat, 2 steps (what the test runs)

A random-init Llama folder (fp32; default 4 layers, hidden 512, 8 heads of 64, 4 key/value
heads, MLP 1024, vocabulary 4096; --quick: 2 layers, hidden 64, vocabulary 768) is written once
with transformers' LlamaConfig under --work, with the tiny Llama 3 tokenizer of
tests/support/tokenizers.py (768 ids) beside it. The pairs (--batch of them, written once to a
jsonl there) are fixed synthetic texts: a prompt and two different answers, each side's prompt +
answer + EOS exactly --seq tokens where the tokenizer allows (within a token or two otherwise),
so there is no padding to speak of.

Each measurement is a fresh process (`--worker`), so its peak resident memory (the kernel's
VmHWM) is that library's alone. Both train LoRA rank 8, alpha 16, dropout 0 on q_proj and
v_proj, fp32 on the CPU, with the sigmoid DPO loss (beta 0.1), the reference being the base
with the adapters switched off (no copy, nothing precomputed), and torch.optim.AdamW (lr 1e-4,
weight decay 0, the default foreach form) after clipping the adapters' gradient norm to 1.0
(TRL's default `max_grad_norm`; tunelib's loop measures the norm every step anyway). Every
step sees all --batch pairs, i.e. 2 × batch rows.

tunelib: the library path the lora_dpo recipe takes — `tunelib.checkpoint.from_pretrained`,
`tunelib.peft.apply_peft(lora_attn_modules=[q_proj, v_proj], ...)`, `set_trainable`,
`tunelib.tokenizers.from_pretrained(chat_format="plain")` and `tunelib.data.preference_dataset`
on the jsonl, its `collate`, and `tunelib.training.objectives.Preference(DPOLoss(beta=0.1),
AdaptersOff())`; a step is objective(model, batch) -> terms, terms.loss / pairs, backward,
clip, optimizer step, zero_grad. The batch is collated once, before timing.

TRL: transformers `AutoModelForCausalLM` + `peft.get_peft_model(LoraConfig(...))` + `trl.DPOTrainer`
(ref_model=None: PEFT adapters disabled for the reference) on a `datasets.Dataset` of the same
prompt/chosen/rejected strings, `DPOConfig(per_device_train_batch_size=batch, max_steps=warmup +
steps, beta=0.1, loss_type="sigmoid", optim="adamw_torch", lr_scheduler_type="constant", ...)`
(a constant lr, as tunelib's bare optimizer here). A `TrainerCallback` times each optimizer step
from `on_step_begin` to `on_step_end` (the batch is already fetched then, and logging comes
after), the first --warmup steps untimed; the loss is read from `compute_loss`.

Same token ids: with no chat template on either side, tunelib's "plain" format is BOS + prompt +
answer + EOS with the answer and EOS trained, and TRL's non-conversational path tokenizes
prompt and prompt + answer + EOS with the same tokenizer.json and trains what follows the
prompt. Each worker reports a hash of its rows' token ids and trained positions (`ids_sha`);
the table says whether they agree. What still differs: TRL passes an attention mask (all ones
here) and its sampler shuffles the order of the pairs within the batch; tunelib's Preference
cuts the output layer into 8 chunks, TRL uses its fused LM-head log-prob path; TRL's step
also runs its Trainer bookkeeping (lr scheduler step, metrics gathering) and tunelib's is the
bare objective + optimizer (the recipe's loop adds its own bookkeeping around it).

Repeats alternate which library goes first; the table gives the medians over repeats of step time
(wall and process CPU) and peak memory, and of the per-repeat ratios tunelib ÷ TRL (range in
brackets), and each side's first-step DPO loss, which must be ln 2 (the policy equals the
reference before the first update).

Results go to --out (default benchmarks/results/dpo-<time>/): runs.json and table.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

from side_by_side import interleaved, peak_rss_gib, run_process, step_rows

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
LIBRARIES = ("tunelib", "trl")
NAMES = {"tunelib": "tunelib", "trl": "TRL DPOTrainer + PEFT"}
SHAPES = {
    "default": dict(vocab_size=4096, hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                    num_attention_heads=8, num_key_value_heads=4, head_dim=64),
    "quick": dict(vocab_size=768, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16),
}
RANK, ALPHA, BETA, LR, MAX_GRAD_NORM = 8, 16, 0.1, 1e-4, 1.0
TARGETS = ["q_proj", "v_proj"]
WORDS = ("the model reads each answer and weighs how well it fits the question before it writes a short "
         "reply about rivers mountains numbers colours animals music bread trains letters and clocks").split()


def write_model(folder: Path, shape: dict) -> Path:
    """The random Llama folder with the tiny Llama 3 tokenizer (once)."""
    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    import torch
    import transformers

    sys.path.insert(0, str(TESTS))
    from support.tokenizers import write_tokenizer

    config = transformers.LlamaConfig(**shape, max_position_embeddings=4096, tie_word_embeddings=False,
                                      bos_token_id=512, eos_token_id=521, attention_dropout=0.0)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    write_tokenizer(folder, "llama3", template=None)  # no chat template: plain text on both sides
    return folder


def write_pairs(path: Path, folder: Path, batch: int, seq: int) -> Path:
    """`batch` pairs whose sides (prompt + answer + EOS) are `seq` tokens (once per batch/seq)."""
    if path.is_file():
        return path
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder)

    def length(prompt: str, answer: str) -> int:
        return len(tok(prompt + answer + tok.eos_token)["input_ids"])

    def answer_for(prompt: str, start: int) -> str:
        words, i = [], start
        while length(prompt, " ".join(words + [WORDS[i % len(WORDS)]])) <= seq - 2:
            words.append(WORDS[i % len(WORDS)])
            i += 1
        while length(prompt, " ".join(words + ["a"])) <= seq:
            words.append("a")
        return " ".join(words)

    rows = []
    for i in range(batch):
        prompt = f"Question {i}: write a few words about the topic number {i}.\n"
        rows.append({"prompt": prompt, "chosen": answer_for(prompt, 3 * i), "rejected": answer_for(prompt, 3 * i + 7)})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- one library, one process


def ids_sha(rows: list[tuple[list[int], list[int]]]) -> str:
    """A hash of the rows' (token ids, trained mask over the ids), order-free."""
    text = json.dumps(sorted([list(map(int, ids)), list(map(int, mask))] for ids, mask in rows))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tunelib_worker(folder: Path, pairs: Path, warmup: int, steps: int) -> dict:
    import torch

    from tunelib.checkpoint import from_pretrained
    from tunelib.data import preference_dataset
    from tunelib.data.labels import IGNORE_INDEX
    from tunelib.peft import adapter_params, apply_peft, set_trainable
    from tunelib.tokenizers import from_pretrained as tokenizer_from_pretrained
    from tunelib.training import DPOLoss
    from tunelib.training.objectives import Preference
    from tunelib.training.objectives.reference import AdaptersOff

    tokenizer = tokenizer_from_pretrained(folder, chat_format="plain")
    dataset = preference_dataset(tokenizer, source="json", data_files=str(pairs))
    items = [dataset[i] for i in range(len(dataset))]
    batch = dataset.collate(items, pad_id=tokenizer.pad_id or 0)
    rows = []
    for item in items:
        for side in ("chosen", "rejected"):
            labels = item[f"{side}_labels"]  # shifted: labels[j] is token j + 1's, -100 where untrained
            rows.append((item[f"{side}_tokens"], [0] + [int(x != IGNORE_INDEX) for x in labels[:-1]]))

    torch.manual_seed(0)
    model = from_pretrained(folder).train()
    apply_peft(model, lora_attn_modules=TARGETS, lora_rank=RANK, lora_alpha=ALPHA, lora_dropout=0.0)
    set_trainable(model)
    params = list(adapter_params(model).values())
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    objective = Preference(DPOLoss(beta=BETA), AdaptersOff())

    def step():
        terms = objective(model, batch)
        loss = terms.loss / objective.count(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    losses, times, cpu_times = [], [], []
    for i in range(warmup + steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        losses.append(step())
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    return {"losses": losses, "times": times, "cpu_times": cpu_times, "ids_sha": ids_sha(rows),
            "rows": len(rows), "tokens": int(batch["input_ids"].numel())}


def trl_worker(folder: Path, pairs: Path, warmup: int, steps: int, batch: int, seq: int, out: Path) -> dict:
    import datasets
    import peft
    import torch
    import transformers
    import trl

    rows_in = [json.loads(line) for line in pairs.read_text().splitlines()]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = peft.get_peft_model(model, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                                       target_modules=TARGETS, task_type="CAUSAL_LM"))
    config = trl.DPOConfig(
        output_dir=str(out), per_device_train_batch_size=batch, max_steps=warmup + steps, beta=BETA,
        loss_type="sigmoid", learning_rate=LR, lr_scheduler_type="constant", weight_decay=0.0, optim="adamw_torch",
        max_grad_norm=MAX_GRAD_NORM,
        report_to=[], use_cpu=True, bf16=False, fp16=False, logging_steps=1, save_strategy="no",
        max_length=2 * seq + 16, dataloader_num_workers=0, gradient_accumulation_steps=1, seed=0,
        disable_tqdm=True,
    )
    losses, times, cpu_times, marks = [], [], [], {}

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            marks["start"], marks["cpu"] = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            wall, cpu = time.perf_counter() - marks["start"], time.process_time() - marks["cpu"]
            if state.global_step > warmup:
                times.append(wall)
                cpu_times.append(cpu)

    class Trainer(trl.DPOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = result[0] if isinstance(result, tuple) else result
            losses.append(float(loss.detach()))
            return result

    trainer = Trainer(model=model, ref_model=None, args=config, processing_class=tokenizer,
                      train_dataset=datasets.Dataset.from_list(rows_in), callbacks=[Timer()])
    rows = [(r["prompt_ids"] + r[f"{side}_ids"], [0] * len(r["prompt_ids"]) + [1] * len(r[f"{side}_ids"]))
            for r in trainer.train_dataset for side in ("chosen", "rejected")]
    trainer.train()
    return {"losses": losses, "times": times, "cpu_times": cpu_times, "ids_sha": ids_sha(rows), "rows": len(rows),
            "tokens": sum(len(ids) for ids, _ in rows)}


def worker(library: str, args) -> dict:
    if library == "tunelib":
        result = tunelib_worker(args.folder, args.pairs, args.warmup, args.steps)
    else:
        result = trl_worker(args.folder, args.pairs, args.warmup, args.steps, args.batch, args.seq,
                            args.folder.parent / "trl-output")
    times, cpu_times = result.pop("times"), result.pop("cpu_times")
    return {"library": library, "step_s": statistics.median(times), "step_cpu_s": statistics.median(cpu_times),
            "peak_gib": peak_rss_gib(), **result}


# ---------------------------------------------------------------- the comparison


def run_worker(library: str, args, folder: Path, pairs: Path) -> dict:
    env = dict(os.environ, HF_DATASETS_CACHE=str(args.work / "datasets-cache"), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    cmd = [sys.executable, __file__, "--worker", library, "--folder", str(folder), "--pairs", str(pairs),
           "--batch", str(args.batch), "--seq", str(args.seq), "--warmup", str(args.warmup), "--steps", str(args.steps)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return run_process(library, cmd, env)


def table(runs: list[dict]) -> str:
    rows, repeats = step_rows(runs, "tunelib", "trl")
    first = {r["library"]: r for r in runs if r["repeat"] == 0}
    same_ids = len({r["ids_sha"] for r in runs}) == 1
    lines = [
        f"| | {NAMES['tunelib']} | {NAMES['trl']} | tunelib ÷ TRL |",
        "|---|---:|---:|---:|",
        *rows,
        f"| first-step DPO loss | {first['tunelib']['losses'][0]:.6f} | {first['trl']['losses'][0]:.6f} "
        f"| ln 2 = {math.log(2):.6f} |",
        "",
        f"{repeats} repeats; {first['tunelib']['rows']} rows a step "
        f"({first['tunelib']['rows'] // 2} pairs); token ids and trained positions "
        f"{'the same on both sides' if same_ids else 'DIFFER between the sides'}.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shape, 1 repeat, 1 warmup and 2 timed steps")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4, help="pairs a step (2 × batch rows)")
    parser.add_argument("--seq", type=int, default=256, help="tokens of each side: prompt + answer + EOS")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the workers")
    parser.add_argument("--work", type=Path, default=HERE / "results" / "dpo-work")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", choices=LIBRARIES, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--pairs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(worker(args.worker, args)))
        return 0
    if args.quick:
        args.repeats, args.warmup, args.steps, args.batch, args.seq = 1, 1, 2, 2, 48
    args.work = args.work.resolve()
    shape = "quick" if args.quick else "default"
    folder = write_model(args.work / f"llama-{shape}", SHAPES[shape])
    pairs = write_pairs(args.work / f"pairs-b{args.batch}-s{args.seq}.jsonl", folder, args.batch, args.seq)
    out = args.out or HERE / "results" / f"dpo-{dt.datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    runs = interleaved(LIBRARIES, args.repeats, lambda library: run_worker(library, args, folder, pairs))
    text = table(runs)
    (out / "runs.json").write_text(json.dumps({"shape": SHAPES[shape], "batch": args.batch, "seq": args.seq,
                                               "warmup": args.warmup, "steps": args.steps, "threads": args.threads,
                                               "runs": runs}, indent=1))
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
