"""Generate an answer from a model folder, streamed to the terminal.

    tune run generate --config generation checkpoint_dir=/tmp/Llama-3.2-1B-Instruct prompt="Tell me a joke"
    tune run generate --config generation checkpoint_dir=out/final/merged system="Answer in French." prompt="Hi"
    tune run generate --config generation checkpoint_dir=/tmp/Llama-3.2-1B-Instruct \
        adapter_dir=out/final/adapter prompt="Hi" temperature=0 max_new_tokens=64
    tune run generate --config generation checkpoint_dir=/tmp/Llama-3.2-1B chat=false prompt="Once upon a time"

checkpoint_dir is any supported Hugging Face folder, a full or merged fine-tune, a folder
`tune run quantize` wrote, or a LoRA run's final/ folder; adapter_dir puts a LoRA/DoRA (PEFT)
or LLaMA-Adapter folder on top of the base. The answer goes to stdout as it is generated;
what was loaded and the speed go to stderr.
"""

import sys
from dataclasses import dataclass
from typing import Literal

from tunelib.config.rules import device_problems, seed_problems
from tunelib.config import instantiate
from tunelib.config.schema import REQUIRED, setting
from tunelib.config.torchtune_inference import TorchtuneInferenceKeys
from tunelib.errors import ConfigError
from tunelib.generation import Generator, Sampling, load_model, seeded_rng, stream_reply
from tunelib.generation.prompt import build_request, encode_request, from_torchtune
from tunelib.generation.torchtune_form import honour_torchtune_keys
from tunelib.tokenizers import from_pretrained

NAMES = ("generate",)
CONFIGS = ("generation",)
DISTRIBUTED = False


@dataclass(kw_only=True)
class _GenerateSettings:
    """Keys of a generation config."""

    checkpoint_dir: str = setting(REQUIRED, "The model folder (HF, a fine-tune's output, a quantized folder).")
    adapter_dir: str | None = setting(None, "A LoRA/DoRA (PEFT) or LLaMA-Adapter folder to apply to checkpoint_dir.")
    tokenizer_dir: str | None = setting(None, "Where the tokenizer files are (default: the model folder).")
    chat_format: str | None = setting(None, "null: the folder's chat template (else the family's); or plain, jinja, a family name.")
    prompt: str | dict[str, str | None] | None = setting(None, "The user message to answer (chat=false: the text to continue); torchtune's {system, user} works too.")
    system: str | None = setting(None, "A system message before everything else.")
    messages: list[dict] | None = setting(None, "Earlier messages [{role: ..., content: ...}]; the prompt (if any) is added after them as the user's.")
    chat: bool = setting(True, "Use the chat format and answer as the assistant; false continues the prompt as plain text.")
    max_new_tokens: int = setting(256, "Most tokens to generate (the model's context also caps it).")
    temperature: float = setting(0.6, "Sampling temperature; 0 is greedy (always the most likely token).")
    top_k: int | None = setting(None, "Sample only from the k most likely tokens (null: all).")
    top_p: float | None = setting(0.9, "Sample only from the most likely tokens whose probability sums to p (null or 1: all).")
    seed: int | None = setting(None, "Random seed; null picks one and prints it.")
    device: str = setting("auto", "cuda, cpu, cuda:N or auto (cuda when available).")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = setting("auto", "Weights' precision; auto keeps the checkpoint's (fp16 becomes fp32 on CPU).")
    compile: bool = setting(False, "torch.compile the one-token step on a static KV cache: faster tokens once the first waits for the compile (tens of seconds on a CPU).")

    @classmethod
    def value_problems(cls, cfg: dict) -> list[str]:
        """The seed's range and a device torch knows, checked with the config so `tune validate` sees them too."""
        return seed_problems(cfg) + device_problems(cfg)


@dataclass(kw_only=True)
class GenerateSettings(TorchtuneInferenceKeys, _GenerateSettings):
    """Its own keys first, then torchtune's model, checkpointer and tokenizer nodes (docs/after_training.md)."""

    @classmethod
    def value_problems(cls, cfg: dict) -> list[str]:
        return _GenerateSettings.value_problems(cfg) + cls.torchtune_problems(cfg)


SCHEMA = GenerateSettings


def main(cfg) -> int:
    sampling = Sampling(cfg.temperature, cfg.top_k, cfg.top_p)  # bad values stop here, before loading
    if cfg.max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={cfg.max_new_tokens}; use 1 or more")
    text, system = from_torchtune(cfg.prompt, cfg.system)
    messages = [dict(m) for m in cfg.messages] if cfg.messages else None
    request = build_request(text, system, messages, chat=cfg.chat)
    tokenizer = honour_torchtune_keys(cfg, instantiate)  # torchtune's nodes, if the config has them
    loaded = load_model(cfg.checkpoint_dir, adapter_dir=cfg.adapter_dir, dtype=cfg.dtype, device=cfg.device,
                        tokenizer_dir=cfg.tokenizer_dir)
    tokenizer = tokenizer or from_pretrained(loaded.tokenizer_dir, chat_format=cfg.chat_format)
    prompt = encode_request(tokenizer, request)
    device = next(loaded.model.parameters()).device
    rng, seed = seeded_rng(cfg.seed, device)
    print(f"Model: {loaded.describe()} on {device}; prompt: {len(prompt)} tokens; seed {seed}", file=sys.stderr, flush=True)
    if cfg.chat and tokenizer.chat_format == "plain":
        print("Note: this tokenizer has no chat template, so the prompt is plain turns; for a base model "
              "chat=false (continue the text) usually works better.", file=sys.stderr, flush=True)

    if cfg.compile:
        print("compile=true: the first token waits for torch.compile of the decode step.", file=sys.stderr, flush=True)
    generator = Generator(loaded.model, compile=cfg.compile)
    reply = stream_reply(generator, tokenizer, prompt, max_new_tokens=cfg.max_new_tokens, sampling=sampling, rng=rng,
                         write=write)
    write("\n")
    print(reply.stats(), file=sys.stderr, flush=True)
    return 130 if reply.stopped == "interrupted" else 0


def write(piece: str) -> None:
    """Print a piece of the answer at once (stdout may be a pipe, which would buffer it)."""
    sys.stdout.write(piece)
    sys.stdout.flush()


if __name__ == "__main__":
    from tunelib.config import run_script

    run_script(main, SCHEMA, sys.argv[1:])
