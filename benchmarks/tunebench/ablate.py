"""tunelib's CPU speed-ups one at a time: each turned off, the others on, in one process.

    python -m tunebench.ablate --workload cpu-tiny-full --assets DIR --data packs.json --steps 16 [--wall]

(`run.py --ablate` runs it for every CPU workload.) Every variant trains its own copy of the
same model on the same batches; the variants take turns step by step, so a busy moment on
the machine falls on all of them. A variant's figure is its median step time: CPU time of
the process by default (steadier on a shared machine; use --threads 1 in run.py so that
waiting threads do not count), wall time with --wall. The last column is the largest loss
difference to "all on" over the steps: no variant may change the training.

The variants undo one change each, the way tunelib worked before it:
- output layer on every row: the LM head also sees prompt and padding positions;
- logits kept: the loss goes through `model.logits` and autograd instead of making the output
  layer's gradients in forward (the logits stay alive until backward);
- document mask: packed documents are attended through the mask instead of one at a time;
- foreach AdamW: torch's default AdamW instead of fused=True;
- LoRA add outside the matmul: `out + B(A x)·s` instead of one addmm.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from tunebench import data
from tunebench.driver_io import lora_split
from tunebench.workloads import Workload


def _loss_on_every_row(loss_module):
    """The default loss, but without dropping untrained rows before the output layer."""

    class EveryRow(loss_module.LinearCrossEntropyLoss):
        def __call__(self, model, batch):
            hidden = model.hidden(batch["input_ids"], position_ids=batch.get("position_ids"),
                                  document_ids=batch.get("document_ids"))
            weight = loss_module._plain_output_weight(model)
            return loss_module._LinearCrossEntropy.apply(hidden.flatten(0, 1), weight, batch["labels"].flatten(),
                                                         self.num_output_chunks, self.ignore_index)

    return EveryRow()


def _lora_add_outside(self, x):
    out = self.base_forward(x)
    lora = self.lora_B(self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype)))) * self.scaling
    return out + lora.to(out.dtype)


class _Patched:
    """Set `obj.name = value` around each call of `step`."""

    def __init__(self, step, obj, name, value):
        self.step, self.obj, self.name, self.value = step, obj, name, value

    def __call__(self):
        old = getattr(self.obj, self.name)
        setattr(self.obj, self.name, self.value)
        try:
            return self.step()
        finally:
            setattr(self.obj, self.name, old)


def make_step(w: Workload, model_dir: Path, lora_init: Path, batches: list[dict], loss_fn, fused: bool = True):
    """One training step of a fresh copy of the workload's model: returns a callable -> loss."""
    from safetensors.torch import load_file

    from tunelib.models import from_hf_config
    from tunelib.peft import apply_peft, initialize_adapters, set_trainable
    from tunelib.training.checkpointer import HFCheckpointer

    kwargs = {}
    if w.method != "full":
        attn, mlp = lora_split(w)
        kwargs = dict(lora_attn_modules=attn, apply_lora_to_mlp=mlp, lora_rank=w.lora_rank,
                      lora_alpha=w.lora_alpha, lora_dropout=0.0)
    model = apply_peft(from_hf_config(checkpoint_dir=str(model_dir), **kwargs))
    HFCheckpointer(str(model_dir), "/tmp/unused").load_model(model, dtype=torch.float32, device=torch.device("cpu"),
                                                             resume=None)
    if w.method == "full":
        model.requires_grad_(True)
    else:
        initialize_adapters(model, torch.device("cpu"), torch.float32)
        set_trainable(model)
        with torch.no_grad():
            for key, a in load_file(str(lora_init)).items():
                model.get_submodule(key.removesuffix(".weight")).weight.copy_(a)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=w.lr, weight_decay=0.0, fused=fused or None)
    done = [0]

    def step() -> float:
        batch = batches[done[0] % len(batches)]
        done[0] += 1
        loss = loss_fn(model, batch) / int((batch["labels"] != -100).sum())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, float("inf"))  # the loop measures the norm every step
        value = loss.item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return value

    return step


def variants(w: Workload, model_dir: Path, lora_init: Path, batches: list[dict]) -> dict:
    """name -> step callable, "all on" first."""
    import tunelib.models.decoder as decoder
    import tunelib.training.loss as loss_module
    from tunelib.peft.lora import LoRALinear

    def step(loss_fn=None, fused=True):
        return make_step(w, model_dir, lora_init, batches, loss_fn or loss_module.LinearCrossEntropyLoss(), fused)

    out = {
        "all on": step(),
        "output layer on every row": step(_loss_on_every_row(loss_module)),
        "logits kept (no gradients in forward)": _Patched(step(), loss_module, "_plain_output_weight", lambda m: None),
        "document mask": _Patched(step(), decoder, "document_lengths", lambda ids: None),
        "foreach AdamW": step(fused=False),
    }
    if w.method != "full":
        out["LoRA add outside the matmul"] = _Patched(step(), LoRALinear, "forward", _lora_add_outside)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workload", required=True, type=Path, help="the workload's JSON (written by prepare)")
    p.add_argument("--assets", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--wall", action="store_true", help="wall time instead of CPU time")
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    a = p.parse_args()
    from tunelib.data.collate import collate

    w = Workload.from_dict(json.loads(a.workload.read_text()))
    seq_len, packs = data.load(a.data)
    batches = [collate([data.as_shifted(pk, seq_len) for pk in packs[i:i + w.batch_size]], pad_id=0, pad_to=seq_len)
               for i in range(0, len(packs), w.batch_size)]
    steps = variants(w, a.assets / "model", a.assets / "lora_init.safetensors", batches)
    clock = time.perf_counter if a.wall else time.process_time
    times = {name: [] for name in steps}
    losses = {name: [] for name in steps}
    for name, step in steps.items():  # warm-up, not timed
        step()
    for _ in range(a.steps):
        for name, step in steps.items():
            t = clock()
            losses[name].append(step())
            times[name].append(clock() - t)
    base = statistics.median(times["all on"])
    rows = []
    for name in steps:
        median = statistics.median(times[name])
        diff = max(abs(x - y) for x, y in zip(losses[name], losses["all on"]))
        rows.append({"workload": w.name, "variant": name, "seconds_per_step": median, "vs_all_on": median / base,
                     "max_loss_diff": diff})
        print(f"| {w.name} | {name} | {median:.3f} | {median / base:.2f}x | {diff:.1e} |", flush=True)
    if a.out:
        a.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
