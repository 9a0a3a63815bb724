"""Quantization-aware full fine-tuning: every weight trains through the fake quantization of the
quantizer it will be quantized with, so the quantized model keeps more of what training taught it.

    tune run qat_single_device --config llama3_2/1B_qat_full
    tune run --nproc_per_node 8 qat_distributed --config llama3_1/8B_qat_full
    tune run qat_single_device --config llama3_2/1B_qat_full fake_quant_after_n_steps=100
    tune run quantize --config quantization checkpoint_dir=OUTPUT_DIR/final \
        quantizer._component_=tunelib.quantization.Int8DynActInt4WeightQATQuantizer quantizer.groupsize=256

`quantizer` (torchtune's key and names) says what the linears inside decoder layers will be:
Int8DynActInt4WeightQATQuantizer (int8 activations, int4 weights) or Int4WeightOnlyQATQuantizer.
Output: `output_dir/final`, a Hugging Face folder of the trained weights, unquantized (fake
quantization leaves no trace in them); `tune run quantize` with the same quantizer writes the
quantized folder that `tune run generate`, `eleuther_eval` and transformers load.
The loop is `tunelib.training.train`; the assembly, in order, is `tunelib.training.setup`.
"""

import sys

from tunelib.training import qat_setup, train
from tunelib.training.objective_setup import next_token
from tunelib.training.settings import QATSettings
from tunelib.training.setup import build_run, preflight
from tunelib.training.trained import FULL, Recipe

NAMES = ("qat_single_device", "qat_distributed")
CONFIGS = ("*_qat_full", "*_qat_single_device", "*_qat_distributed", "*_qat_full_tunelib")
RECIPE = Recipe("qat", trains=FULL, objective=next_token)
SCHEMA = QATSettings


def check(cfg) -> list[str]:
    """What `tune validate` checks beyond the config: the model on meta, its quantizer, optimizer, schedule, loss."""
    return preflight(cfg, RECIPE) + qat_setup.check(cfg)


def main(cfg) -> int:
    built = build_run(cfg, RECIPE)
    with built:  # on the way out, whatever happened: loggers, signals, process group, output_dir lock
        train(built.run)
        code = built.report(adapter=False, merged=False)
        if code == 0:
            final = built.checkpointer.output_dir / "final"
            built.run.dist.say(f"  quantize it:  {qat_setup.quantize_command(cfg, final)}")
        return code


if __name__ == "__main__":
    from tunelib.config import run_script

    run_script(main, SCHEMA, sys.argv[1:])
