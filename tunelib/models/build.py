"""Model builders: from a table of named sizes, and from a folder's config.json.

Every builder takes `checkpoint_dir` plus exactly the keywords of `AdapterOptions`, so a config
can swap `model._component_` between builders without tripping over leftover adapter keys, and
`tune validate` can check names and types from the signature. The adapter keywords are recorded
on the model (`model.adapter_options`) for `tunelib.peft.apply_peft` to apply.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Any, Callable

import torch

from tunelib.errors import CheckpointError
from tunelib.models.adapter_options import AdapterOptions
from tunelib.models.config import DecoderConfig
from tunelib.models.decoder import CausalLM
from tunelib.models.registry import read_hf_config


def build(config: DecoderConfig, adapters: dict[str, Any]) -> CausalLM:
    """A CausalLM on the meta device; `adapters` (AdapterOptions keywords), when any is given,
    recorded as `model.adapter_options` for `tunelib.peft.apply_peft`."""
    with torch.device("meta"):
        model = CausalLM(config)
    model.adapter_options = AdapterOptions(**adapters) if adapters else None
    return model


@functools.cache
def adapter_parameters() -> tuple[inspect.Parameter, ...]:
    """AdapterOptions' fields as keyword-only parameters, with evaluated annotations."""
    hints = typing.get_type_hints(AdapterOptions)
    return tuple(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                   annotation=hints[f.name]) for f in dataclasses.fields(AdapterOptions))


def _with_signature(fn: Callable, name: str, doc: str, module: str, checkpoint_default: Any) -> Callable:
    first = inspect.Parameter("checkpoint_dir", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              default=checkpoint_default, annotation=str | None if checkpoint_default is None else str)
    signature = inspect.Signature([first, *adapter_parameters()], return_annotation=CausalLM)
    fn.__signature__ = signature
    fn.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()} | {"return": CausalLM}
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__, fn.__module__ = doc, module
    return fn


_ARGS_DOC = """
    Args:
        checkpoint_dir: {checkpoint}
        lora_attn_modules, apply_lora_to_mlp, ...: adapter settings, exactly those of
            `tunelib.models.AdapterOptions`; when any is given they are recorded as
            `model.adapter_options`, and `tunelib.peft.apply_peft(model)` adds the adapters.

    Returns:
        CausalLM on the meta device; load weights with `tunelib.checkpoint.load_hf_weights`.

    Raises:
        CheckpointError: {raises}
"""


def named_builder(name: str, config: DecoderConfig, title: str, module: str) -> Callable:
    """A builder for one named size: `name(checkpoint_dir=None, **adapters) -> CausalLM`."""

    def builder(checkpoint_dir=None, **adapters):
        builder.__signature__.bind(checkpoint_dir, **adapters)  # TypeError for an unknown keyword
        return build(_checked(name, config, checkpoint_dir), adapters)

    doc = f"{title}: {_describe(config)}." + _ARGS_DOC.format(
        checkpoint="a Hugging Face model folder; its config.json (if any) must describe this same model.",
        raises="checkpoint_dir's config.json describes another architecture (the differing fields are named).")
    return _with_signature(builder, name, doc, module, None)


def _checked(name: str, config: DecoderConfig, checkpoint_dir) -> DecoderConfig:
    if checkpoint_dir is None or not (Path(checkpoint_dir) / "config.json").is_file():
        return config
    found = read_hf_config(checkpoint_dir)
    differences = config.differences(found)
    if differences:
        raise CheckpointError(
            f"{Path(checkpoint_dir) / 'config.json'} describes a different model than {name} "
            f"({name} vs config.json): {'; '.join(differences)}; use the builder for that model, "
            "or model._component_=tunelib.models.from_hf_config to build whatever the folder holds")
    return found  # the folder's context length wins; everything that computes is identical


def add_builders(namespace: dict, family: str, title: str, sizes: dict[str, DecoderConfig]) -> list[str]:
    """Put one builder per size into a family module's `namespace` as `<family>_<size>`; return the names."""
    names = []
    for size, config in sizes.items():
        name = f"{family}_{size}"
        namespace[name] = named_builder(name, config, f"{title} {_spoken(size)}", namespace["__name__"])
        names.append(name)
    return names


def _spoken(size: str) -> str:
    """'0_5b' -> '0.5B', '7b_v0_1' -> '7B v0.1', as model cards write sizes."""
    base, _, version = size.partition("_v")
    base = base.replace("_", ".").replace("b", "B")
    return f"{base} v{version.replace('_', '.')}" if version else base


def _describe(c: DecoderConfig) -> str:
    return (f"{c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} heads "
            f"({c.num_key_value_heads} key/value), vocab {c.vocab_size}"
            + (", tied embeddings" if c.tie_word_embeddings else ""))


def _from_hf_config(checkpoint_dir, **adapters):
    _from_hf_config.__signature__.bind(checkpoint_dir, **adapters)
    return build(read_hf_config(checkpoint_dir), adapters)


from_hf_config = _with_signature(
    _from_hf_config, "from_hf_config",
    "Build whatever architecture `checkpoint_dir/config.json` describes (any supported family)."
    + _ARGS_DOC.format(checkpoint="a Hugging Face model folder with config.json.",
                       raises="config.json is missing or names an unsupported architecture (the supported "
                              "ones are listed)."),
    __name__, inspect.Parameter.empty)
