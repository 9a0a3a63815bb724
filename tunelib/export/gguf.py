"""A model folder (or an adapter merged onto its base) as one GGUF file for llama.cpp and Ollama.

    export_gguf("out/final/merged", "model.gguf", outtype="q8_0")

Written with the `gguf` package (the format's own Python writer, `pip install tunelib[gguf]`),
no llama.cpp checkout. Tensors are converted and written one at a time, so memory holds one
weight beside the source, and the file appears only when complete (written under a
temporary name, then renamed).

Output types: f32, f16 and bf16 store every matrix in that type; q8_0 stores it as blocks of
32 int8 values with one f16 scale (llama.cpp's Q8_0, about 8.5 bits a weight). As llama.cpp's
converter does, norm weights, biases and RoPE factors (1-D tensors) always stay f32, and a
matrix whose rows are not a multiple of 32 falls back to f16 under q8_0.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import gguf
import numpy as np

from tunelib.errors import ConfigError
from tunelib.export.archs import arch_for, gguf_tensors, write_metadata
from tunelib.export.source import Weight, open_source, resolve
from tunelib.export.vocab import read_vocab, write_vocab
from tunelib.models.registry import read_hf_config

Q = gguf.GGMLQuantizationType
OUTTYPES = {"f32": (Q.F32, gguf.LlamaFileType.ALL_F32), "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
            "bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16), "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0)}


def export_gguf(folder: str | Path, out: str | Path, *, outtype: str = "f16", base: str | Path | None = None,
                force: bool = False, name: str | None = None) -> list[str]:
    """Write the model of `folder` to the GGUF file `out`.

    Args:
        folder: an HF model folder, a run's output or final folder, or a PEFT LoRA/DoRA adapter
            folder (merged onto its base: `base`, or the folder its adapter_config names).
        out: the .gguf file to write.
        outtype: f32, f16, bf16 or q8_0.
        base: the base model folder of an adapter.
        force: replace `out` if it exists.
        name: `general.name` in the file (default: the model folder's name).

    Returns:
        Notes on what llama.cpp will compute differently from tunelib (empty for most models).

    Raises:
        ConfigError: an unknown outtype, or `out` exists and `force` is False.
        CheckpointError: a missing folder, an unsupported architecture or tokenizer, a weight
            llama.cpp has no place for.
    """
    if outtype not in OUTTYPES:
        raise ConfigError(f"unknown outtype {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    out = Path(out).expanduser()
    if out.is_dir():
        raise ConfigError(f"{out} is a folder; give the path of the .gguf file to write")
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists; pass --force to replace it")
    model_dir, adapter = resolve(folder, base)
    config = read_hf_config(model_dir)
    arch = arch_for(config, model_dir / "config.json")
    vocab = read_vocab(model_dir, config.vocab_size)  # what can be refused is refused before the weights are read
    with _quiet_gguf(), open_source(model_dir, adapter) as source:
        tensors = gguf_tensors(source, arch)
        writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[arch.name])
        writer.add_name(name or _model_name(source.adapter_dir or source.model_dir))
        writer.add_file_type(OUTTYPES[outtype][1])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        notes = write_metadata(writer, arch, source.config)
        write_vocab(writer, source.model_dir, vocab, arch.pre_tokenizer)
        _write(writer, tensors, OUTTYPES[outtype][0], out)
    return notes


def _write(writer: gguf.GGUFWriter, tensors: dict[str, Weight], qtype: Q, out: Path) -> None:
    """Header, metadata and tensor infos first (shapes only), then each tensor's data in turn."""
    plan = {name: _storage(weight.shape, qtype) for name, weight in tensors.items()}
    for name, weight in tensors.items():
        stored, byte_shape = plan[name]
        dtype = np.float32 if stored == Q.F32 else np.float16 if stored == Q.F16 else np.uint8
        writer.add_tensor_info(name, byte_shape if dtype == np.uint8 else weight.shape, np.dtype(dtype),
                               _nbytes(byte_shape, dtype), raw_dtype=stored if dtype == np.uint8 else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name, weight in tensors.items():
            values = weight.make().float().numpy()
            writer.write_tensor_data(gguf.quants.quantize(values, plan[name][0]))
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise


def _model_name(folder: Path) -> str:
    """The folder's name, or the run's for a run's `final/`, `final/merged/` or `final/adapter/`."""
    folder = folder.resolve()
    while folder.name in ("final", "merged", "adapter") and folder.parent != folder:
        folder = folder.parent
    return folder.name


def _storage(shape: tuple[int, ...], qtype: Q) -> tuple[Q, tuple[int, ...]]:
    """(GGML type, stored byte shape) of one tensor under `qtype` (llama.cpp converter's rules)."""
    if len(shape) == 1:
        return Q.F32, shape
    if qtype == Q.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] != 0:
        qtype = Q.F16
    if qtype in (Q.F32, Q.F16):
        return qtype, shape
    return qtype, gguf.quants.quant_shape_to_byte_shape(shape, qtype)


def _nbytes(shape: tuple[int, ...], dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


@contextlib.contextmanager
def _quiet_gguf():
    """gguf logs each step at INFO and harmless oddities of tokenizer files at WARNING; what
    matters to the user is returned as notes or raised."""
    logger = logging.getLogger("gguf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
