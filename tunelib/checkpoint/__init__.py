"""Checkpoints in and out: Hugging Face model folders, PEFT adapters, training state, atomic folders.

    from tunelib.checkpoint import load_hf_weights, save_hf_folder
    load_hf_weights(model, "/tmp/Llama-3.2-1B", dtype=torch.bfloat16, device="cuda")
    save_hf_folder(model.state_dict(), "out/step_100", source_dir="/tmp/Llama-3.2-1B")
"""

from tunelib.checkpoint.checkpointer import HFCheckpointer
from tunelib.checkpoint.hf_load import load_hf_weights, weight_files
from tunelib.checkpoint.hf_save import hf_state_dict, save_hf_folder

__all__ = ["HFCheckpointer", "hf_state_dict", "load_hf_weights", "save_hf_folder", "weight_files"]
