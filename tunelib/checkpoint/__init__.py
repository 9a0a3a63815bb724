"""Checkpoints in and out: Hugging Face model folders, training state, atomic folders.

    from tunelib.checkpoint import from_pretrained, load_hf_weights, save_hf_folder
    model = from_pretrained("/tmp/Llama-3.2-1B", dtype="bfloat16")   # built and loaded
    load_hf_weights(meta_model, "/tmp/Llama-3.2-1B", dtype=torch.bfloat16, device="cuda")
    save_hf_folder(model.state_dict(), "out/step_100", source_dir="/tmp/Llama-3.2-1B")

It builds on tunelib.models only; adapters (and PEFT folders) are tunelib.peft's, one layer up.
"""

from tunelib.checkpoint.hf_load import load_hf_weights, weight_files
from tunelib.checkpoint.hf_save import hf_state_dict, save_hf_folder
from tunelib.checkpoint.pretrained import from_pretrained

__all__ = ["from_pretrained", "hf_state_dict", "load_hf_weights", "save_hf_folder", "weight_files"]
