"""Quantization-aware LoRA: adapters train on a frozen base whose linears compute through the
fake quantization of the quantizer the merged model will be quantized with.

    tune run qat_lora_finetune_single_device --config llama3_2/1B_qat_lora
    tune run --nproc_per_node 2 qat_lora_finetune_distributed --config llama3_2/1B_qat_lora
    tune run quantize --config quantization checkpoint_dir=OUTPUT_DIR/final/merged \
        quantizer._component_=tunelib.quantization.Int8DynActInt4WeightQATQuantizer quantizer.groupsize=256

Only the base product `W x + b` of each adapted linear is fake-quantized; the adapter path stays in
full precision (as in torchtune). NF4 base weights (quantize_base) and DoRA are refused.
Output: `output_dir/final/adapter` (a PEFT folder) and, unless save_adapter_weights_only=True,
`output_dir/final/merged` (an HF model folder, unquantized), which `tune run quantize` with the
same quantizer turns into the quantized model.
The loop is `tunelib.training.train`; the assembly, in order, is `tunelib.training.setup`.
"""

import sys

from tunelib.training import qat_setup, train
from tunelib.training.objective_setup import next_token
from tunelib.training.settings import QATLoRASettings
from tunelib.training.setup import build_run, preflight
from tunelib.training.trained import LORA, Recipe

NAMES = ("qat_lora_finetune_single_device", "qat_lora_finetune_distributed")
CONFIGS = ("*_qat_lora", "*_qat_lora_single_device", "*_qat_lora_tunelib")
RECIPE = Recipe("qat_lora_finetune", trains=LORA, objective=next_token)
SCHEMA = QATLoRASettings


def check(cfg) -> list[str]:
    """What `tune validate` checks beyond the config: the model on meta, its quantizer, optimizer, schedule, loss."""
    return preflight(cfg, RECIPE) + qat_setup.check(cfg)


def main(cfg) -> int:
    built = build_run(cfg, RECIPE)
    with built:  # on the way out, whatever happened: loggers, signals, process group, output_dir lock
        train(built.run)
        code = built.report(adapter=True, merged=not cfg.save_adapter_weights_only)
        if code == 0:
            final = built.checkpointer.output_dir / "final"
            command = (qat_setup.quantize_command(cfg, cfg.checkpoint_dir, final / "adapter")
                       if cfg.save_adapter_weights_only else qat_setup.quantize_command(cfg, final / "merged"))
            built.run.dist.say(f"  quantize it:  {command}")
        return code


if __name__ == "__main__":
    from tunelib.config import run_script

    run_script(main, SCHEMA, sys.argv[1:])
