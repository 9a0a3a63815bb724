"""The workloads: one model shape, one data shape and one training setting each.

A workload is plain data (it is written to JSON and read by every driver), so all three
libraries get exactly the same numbers. CPU workloads run here in fp32; GPU workloads are
the issue's Llama-3.2-1B and Llama-3.1-8B shapes with random weights, packed to 2048, bf16.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Every linear layer of a decoder layer: the adapter targets of every LoRA workload.
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Shape:
    """A Llama-3 decoder (GQA, SwiGLU, RMSNorm, llama3-scaled RoPE) by its config.json numbers."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool = False
    rope_factor: float = 8.0  # 8 for Llama 3.1, 32 for Llama 3.2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class Workload:
    """What every library is asked to do, and how it is measured."""

    name: str
    shape: Shape
    method: str  # "lora", "qlora" or "full"
    device: str  # "cpu" or "cuda"
    dtype: str  # "fp32" or "bf16"
    seq_len: int  # every pack has exactly this many positions
    batch_size: int  # packs per step (no gradient accumulation)
    warmup_steps: int  # not timed: allocator, caches, compile
    timed_steps: int
    lr: float = 1e-4
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: list[str] = field(default_factory=lambda: list(ALL_LINEAR))
    compile: bool = False
    activation_checkpointing: bool = False
    mean_doc_len: int = 160  # packed documents are drawn around this length
    seed: int = 0

    @property
    def steps(self) -> int:
        return self.warmup_steps + self.timed_steps

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "Workload":
        return Workload(**{**d, "shape": Shape(**d["shape"])})


# Small enough that a step takes about a second on 2 CPU cores in fp32, Llama-3-shaped
# otherwise (GQA 4:1, SwiGLU, untied head, llama3 RoPE). The vocabulary is small on purpose:
# with 128k ids the head would be 90% of the model and the benchmark would time one matmul.
TINY = Shape(vocab_size=8192, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
             num_attention_heads=8, num_key_value_heads=2)
LLAMA_3_2_1B = Shape(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True, rope_factor=32.0)
LLAMA_3_1_8B = Shape(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8)


def _cpu(method: str) -> Workload:
    return Workload(name=f"cpu-tiny-{method}", shape=TINY, method=method, device="cpu", dtype="fp32",
                    seq_len=512, batch_size=4, warmup_steps=3, timed_steps=10)


def _gpu(size: str, shape: Shape, method: str) -> Workload:
    # torchtune's best settings (issue 10): compile, packing, activation checkpointing.
    return Workload(name=f"gpu-{size}-{method}", shape=shape, method=method, device="cuda", dtype="bf16",
                    seq_len=2048, batch_size=2, warmup_steps=5, timed_steps=20, lr=2e-5 if method == "full" else 1e-4,
                    compile=True, activation_checkpointing=True, mean_doc_len=400)


WORKLOADS: dict[str, Workload] = {w.name: w for w in [
    _cpu("lora"), _cpu("full"),
    *[_gpu(size, shape, m) for size, shape in (("1b", LLAMA_3_2_1B), ("8b", LLAMA_3_1_8B))
      for m in ("lora", "qlora", "full")],
]}
CPU_WORKLOADS = [n for n, w in WORKLOADS.items() if w.device == "cpu"]
GPU_WORKLOADS = [n for n, w in WORKLOADS.items() if w.device == "cuda"]
