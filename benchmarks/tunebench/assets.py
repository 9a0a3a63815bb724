"""The one model every library starts from: a random Llama-3-shaped Hugging Face folder.

    model/config.json, model/model.safetensors
                                      weights N(0, 0.02), norms 1, from a fixed seed
    model/tokenizer.json, model/tokenizer_config.json
                                      a word-level vocabulary of vocab_size ids (the data is
                                      pre-tokenized; libraries only read the pad/bos/eos ids)
    lora_init.safetensors             the LoRA A matrices every library starts from
                                      (PEFT's init: uniform(±1/sqrt(in)); B is zero), keyed
                                      by Hugging Face module name, fp32

LoRA's A is random, and each library draws it in its own order; starting all three from the
same A is what makes their loss curves comparable step by step.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from tunebench.workloads import Shape, Workload

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
HF_DTYPE = {"fp32": "float32", "bf16": "bfloat16"}


def hf_config(shape: Shape, dtype: str) -> dict:
    """The config.json of a Llama-3 model of this shape."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": shape.vocab_size, "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size, "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads, "num_key_value_heads": shape.num_key_value_heads,
        "head_dim": shape.head_dim, "hidden_act": "silu", "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": shape.rope_factor, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "tie_word_embeddings": shape.tie_word_embeddings, "attention_bias": False, "mlp_bias": False,
        "attention_dropout": 0.0, "initializer_range": 0.02, "bos_token_id": 1, "eos_token_id": 2,
        "pad_token_id": 0, "torch_dtype": HF_DTYPE[dtype], "dtype": HF_DTYPE[dtype], "use_cache": False,
    }


def weight_shapes(shape: Shape) -> dict[str, tuple[int, ...]]:
    """Every weight of the model by its Hugging Face name."""
    h, i, d = shape.hidden_size, shape.intermediate_size, shape.head_dim
    q, kv = shape.num_attention_heads * d, shape.num_key_value_heads * d
    out = {"model.embed_tokens.weight": (shape.vocab_size, h), "model.norm.weight": (h,)}
    if not shape.tie_word_embeddings:
        out["lm_head.weight"] = (shape.vocab_size, h)
    for n in range(shape.num_hidden_layers):
        p = f"model.layers.{n}."
        out.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h), p + "mlp.down_proj.weight": (h, i),
        })
    return out


def make_weights(shape: Shape, dtype: str, seed: int) -> dict[str, torch.Tensor]:
    """Every weight: N(0, 0.02) drawn in a fixed order from `seed`, norms 1."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, size in weight_shapes(shape).items():
        if name.endswith("norm.weight"):
            out[name] = torch.ones(size, dtype=DTYPES[dtype])
        else:
            out[name] = (torch.randn(size, generator=g) * 0.02).to(DTYPES[dtype])
    return out


def lora_init(shape: Shape, targets: list[str], rank: int, seed: int) -> dict[str, torch.Tensor]:
    """`<module>.lora_A.weight` (rank, in) for every target module, as PEFT draws it."""
    g = torch.Generator().manual_seed(seed + 1)
    out = {}
    for name, size in weight_shapes(shape).items():
        module = name.removesuffix(".weight")
        if module.rpartition(".")[2] in targets and ".layers." in module:
            bound = size[1] ** -0.5  # kaiming_uniform(a=sqrt(5)) on (rank, in)
            out[f"{module}.lora_A.weight"] = (torch.rand(rank, size[1], generator=g) * 2 - 1) * bound
    return out


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    """A word-level tokenizer.json with `vocab_size` ids (pad 0, bos 1, eos 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<pad>", "<|begin_of_text|>", "<|end_of_text|>"]
    vocab = {t: i for i, t in enumerate(specials + [f"t{i}" for i in range(len(specials), vocab_size)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": specials[1], "eos_token": specials[2], "pad_token": specials[0],
         "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 131072}, indent=1))


def make_model_folder(root: Path, w: Workload) -> Path:
    """Write `root/model` and `root/lora_init.safetensors` for `w`; return root.

    The model folder itself lives in `root/../models/<digest>` and `root/model` links to it,
    so workloads on the same model (LoRA, QLoRA and full of one shape) share one copy: three
    copies of an 8B model would not fit on a 64 GiB disk. A stamp says what each was made
    for; an existing one that matches is kept. The LoRA init lies outside the model folder,
    where no library would take it for weights.
    """
    root = Path(root)
    model_stamp = json.dumps({"shape": w.to_dict()["shape"], "dtype": w.dtype, "seed": w.seed}, sort_keys=True)
    folder = root.parent / "models" / hashlib.sha256(model_stamp.encode()).hexdigest()[:12]
    stamp = folder.parent / f"{folder.name}.stamp.json"  # beside the folder: no library sees it
    if not stamp.exists() or stamp.read_text() != model_stamp:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(hf_config(w.shape, w.dtype), indent=1))
        (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
        save_file(make_weights(w.shape, w.dtype, w.seed), str(folder / "model.safetensors"), metadata={"format": "pt"})
        write_tokenizer(folder, w.shape.vocab_size)
        stamp.write_text(model_stamp)
    root.mkdir(parents=True, exist_ok=True)
    link = root / "model"
    if link.is_symlink() or link.exists():
        if link.resolve() != folder.resolve():
            link.unlink() if link.is_symlink() else shutil.rmtree(link)
    if not link.exists():
        link.symlink_to(Path("..") / "models" / folder.name)
    lora_stamp = json.dumps({"model": model_stamp, "rank": w.lora_rank, "targets": w.lora_targets}, sort_keys=True)
    if not (root / "stamp.json").exists() or (root / "stamp.json").read_text() != lora_stamp:
        save_file(lora_init(w.shape, w.lora_targets, w.lora_rank, w.seed), str(root / "lora_init.safetensors"))
        (root / "stamp.json").write_text(lora_stamp)
    return root
