"""Hugging Face transformers + PEFT: `Trainer` on `AutoModelForCausalLM` (+ `get_peft_model`).

Settings are the Trainer's defaults where the workload does not fix them (AdamW from
`optim`'s default, adamw_torch_fused with torch >= 2.8; SDPA attention). Packed rows carry
per-document position_ids and no attention mask, from which transformers builds the
document mask. The additions: the LoRA A matrices are set to the shared init, the sampler is
sequential, and a callback hands each step's exact loss to the probe.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from tunebench import data
from tunebench.driver_io import parse_job
from tunebench.probe import Probe


class PackedRows(torch.utils.data.Dataset):
    def __init__(self, path: str):
        self.seq_len, self.packs = data.load(path)

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, i: int) -> dict:
        v = data.as_unshifted(self.packs[i], self.seq_len)
        return {"input_ids": torch.tensor(v["tokens"]), "labels": torch.tensor(v["labels"]),
                "position_ids": torch.tensor(v["positions"])}


def load_model(job):
    from transformers import AutoModelForCausalLM

    w = job.workload
    kwargs = {"dtype": torch.float32 if w.dtype == "fp32" else torch.bfloat16, "attn_implementation": "sdpa"}
    if w.device == "cuda":
        kwargs["device_map"] = {"": 0}  # load (and, for QLoRA, quantize) straight onto the GPU
    if w.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_quant_storage=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(job.model_dir, **kwargs)
    if w.method == "full":
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=w.lora_rank, lora_alpha=w.lora_alpha, lora_dropout=0.0, bias="none",
                      target_modules=list(w.lora_targets), task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    with torch.no_grad():
        for key, a in load_file(str(job.lora_init)).items():
            name = "base_model.model." + key.replace(".lora_A.weight", ".lora_A.default.weight")
            target = model.get_parameter(name)
            target.copy_(a.to(target.dtype))
    return model


def main() -> None:
    import peft
    import transformers
    from transformers import Trainer, TrainerCallback, TrainingArguments

    job = parse_job()
    w = job.workload
    probe = Probe(w.device)
    losses: list[torch.Tensor] = []

    class StepProbe(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            probe.step(losses[-1].item())

    class ProbedTrainer(Trainer):
        def training_step(self, *args, **kwargs):
            loss = super().training_step(*args, **kwargs)
            losses.append(loss)
            return loss

    args = TrainingArguments(
        output_dir=str(job.workdir / "out"), per_device_train_batch_size=w.batch_size, max_steps=w.steps,
        learning_rate=w.lr, weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=0.0,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=w.device == "cpu", seed=w.seed,
        dataloader_num_workers=0, remove_unused_columns=False, train_sampling_strategy="sequential",
        gradient_checkpointing=w.activation_checkpointing, torch_compile=w.compile, disable_tqdm=True,
        # Non-reentrant checkpointing reaches the adapters inside checkpointed layers even though
        # the (frozen) embeddings' output needs no gradient; torchtune and tunelib checkpoint this way.
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    trainer = ProbedTrainer(model=load_model(job), args=args, train_dataset=PackedRows(str(job.data)),
                            callbacks=[StepProbe()])
    trainer.train()
    probe.write(job.out, library="peft", version=f"transformers {transformers.__version__}, peft {peft.__version__}",
                torch=torch.__version__, threads=torch.get_num_threads(),
                settings={"optim": str(args.optim), "attn_implementation": "sdpa", **w.to_dict()})


if __name__ == "__main__":
    main()
