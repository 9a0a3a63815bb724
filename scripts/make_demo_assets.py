"""Make the demo's bundled files: a small instruction dataset, a tokenizer and a tiny base model.

    python scripts/make_demo_assets.py      # writes tunelib/assets/demo/ (about 2 minutes on CPU)

Everything is deterministic and made here, nothing is downloaded:

1. `chat_tiny.jsonl`: one question and its answer a row (sums, opposites, capitals, plurals,
   colours, capital letters), generated from small tables as Alpaca-style rows and written
   as questions a person would type into `tune chat` ("Give the plural of this word: city").
2. `model/tokenizer.json`: a byte-level BPE of 512 ids trained on that text, plus
   `<|endoftext|>`, with a ChatML chat template in `tokenizer_config.json`.
3. `model/`: a Llama-shaped model (4 layers, hidden 128, tied embeddings), pretrained from
   random weights with tunelib's own full fine-tuning recipe on the rows as plain text, so
   the LoRA demo starts from a model that knows the words but not the Alpaca format.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tunelib" / "assets" / "demo"
EOS = "<|endoftext|>"
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

OPPOSITES = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("day", "night"),
             ("happy", "sad"), ("open", "closed"), ("early", "late"), ("light", "dark"), ("old", "new"),
             ("left", "right"), ("full", "empty"), ("wet", "dry"), ("hard", "soft"), ("long", "short")]
CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Japan", "Tokyo"), ("Spain", "Madrid"),
            ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Canada", "Ottawa"),
            ("Germany", "Berlin"), ("India", "New Delhi"), ("Norway", "Oslo"), ("Chile", "Santiago")]
PLURALS = [("mouse", "mice"), ("child", "children"), ("foot", "feet"), ("tooth", "teeth"), ("cat", "cats"),
           ("box", "boxes"), ("city", "cities"), ("leaf", "leaves"), ("person", "people"), ("dog", "dogs")]
COLOURS = [("the sky", "blue"), ("grass", "green"), ("snow", "white"), ("a banana", "yellow"),
           ("coal", "black"), ("a tomato", "red"), ("an orange", "orange"), ("a plum", "purple")]
WORDS = ["hello", "world", "tune", "model", "data", "light", "river", "stone", "green", "apple"]


def rows(n: int = 800, seed: int = 0) -> list[dict]:
    """`n` instruction rows drawn from the tables above."""
    rng = random.Random(seed)
    makers = [
        lambda: (lambda a, b: {"instruction": "Add the two numbers.", "input": f"{a} and {b}",
                               "output": f"{a} plus {b} is {a + b}."})(rng.randint(0, 20), rng.randint(0, 20)),
        lambda: (lambda w: {"instruction": f"What is the opposite of {w[0]}?", "input": "",
                            "output": f"The opposite of {w[0]} is {w[1]}."})(rng.choice(OPPOSITES)),
        lambda: (lambda c: {"instruction": f"What is the capital of {c[0]}?", "input": "",
                            "output": f"The capital of {c[0]} is {c[1]}."})(rng.choice(CAPITALS)),
        lambda: (lambda p: {"instruction": "Give the plural of this word.", "input": p[0],
                            "output": f"The plural of {p[0]} is {p[1]}."})(rng.choice(PLURALS)),
        lambda: (lambda c: {"instruction": f"What colour is {c[0]}?", "input": "",
                            "output": f"{c[0].capitalize()} is {c[1]}."})(rng.choice(COLOURS)),
        lambda: (lambda w: {"instruction": "Write this word in capital letters.", "input": w,
                            "output": w.upper()})(rng.choice(WORDS)),
    ]
    return [rng.choice(makers)() for _ in range(n)]


def as_question(row: dict) -> dict:
    """An Alpaca-style row as one chat question: the instruction, with its input after a colon."""
    question = f"{row['instruction'].rstrip('.')}: {row['input']}" if row["input"] else row["instruction"]
    return {"input": question, "output": row["output"]}


def write_data(folder: Path, data: list[dict]) -> Path:
    path = folder / "chat_tiny.jsonl"
    path.write_text("".join(json.dumps(as_question(r)) + "\n" for r in data))
    return path


def write_tokenizer(folder: Path, data: list[dict]) -> int:
    """Train the BPE on the rows' text; return the vocabulary size (with special tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=[EOS, "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = [f"{r['instruction']} {r['input']} {r['output']}" for r in data]
    text += ["Below is an instruction that describes a task, paired with an input that provides further context. "
             "Write a response that appropriately completes the request.\n\n### Instruction:\n### Input:\n### Response:\n"]
    tok.train_from_iterator(text, trainer)
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": EOS,
              "pad_token": EOS, "chat_template": CHATML, "model_max_length": 512}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return tok.get_vocab_size()


def write_random_model(folder: Path, vocab_size: int) -> None:
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rope_theta=10000.0,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)


PRETRAIN = """
output_dir: {out}
checkpoint_dir: {model}
model: {{_component_: tunelib.models.from_hf_config}}
tokenizer: {{_component_: tunelib.tokenizers.from_pretrained, path: {model}, max_seq_len: 128}}
dataset:
  _component_: tunelib.data.text_completion_dataset
  source: json
  data_files: {data}
  column: text
  packed: true
seed: 0
batch_size: 8
epochs: 40
optimizer: {{_component_: torch.optim.AdamW, lr: 3e-3, weight_decay: 0.01}}
lr_scheduler: {{_component_: tunelib.training.get_cosine_schedule_with_warmup, num_warmup_steps: 50}}
dtype: fp32
device: cpu
"""


def pretrain(folder: Path, data: list[dict], work: Path) -> None:
    """Full fine-tuning from random weights on the rows as plain text, with tunelib itself."""
    text = work / "text.jsonl"
    text.write_text("".join(json.dumps({"text": f"{r['instruction']} {r['input']} {r['output']}".replace("  ", " ")})
                            + "\n" for r in data))
    config = work / "pretrain.yaml"
    config.write_text(PRETRAIN.format(out=work / "out", model=folder, data=text))
    subprocess.run([sys.executable, "-m", "tunelib.cli.main", "run", "full_finetune_single_device",
                    "--config", str(config)], check=True)
    final = work / "out" / "final"
    for name in ("model.safetensors", "config.json"):
        shutil.copyfile(final / name, folder / name)


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    model = OUT / "model"
    model.mkdir(parents=True)
    data = rows()
    write_data(OUT, data)
    vocab = write_tokenizer(model, data)
    write_random_model(model, vocab)
    with tempfile.TemporaryDirectory() as work:
        pretrain(model, data, Path(work))
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": 0, "pad_token_id": 0}) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
