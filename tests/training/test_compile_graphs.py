"""compile=True compiles whole graphs: no graph break in a decoder layer for any method, packed
or not, and batch lengths that change do not compile new graphs batch after batch.

Dynamo does the tracing and the counting whatever the backend, so the layers are compiled
with "aot_eager" (forward and backward traced, nothing generated): the same graphs inductor
would get, in seconds. tests/recipes/test_training_options.py runs compile=True with inductor.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import tunelib.models
from support.recipes import tiny_model_folder
from tunelib.checkpoint import load_hf_weights
from tunelib.data.collate import collate
from tunelib.models import flex
from tunelib.peft import apply_peft, initialize_adapters, is_adapter_key, nf4_transform, set_trainable
from tunelib.training import transforms
from tunelib.training.loss import LinearCrossEntropyLoss, chunk_cross_entropy

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

METHODS = {
    "full": {},
    "lora": {"lora_attn_modules": ["q_proj", "v_proj"]},
    "dora": {"lora_attn_modules": ["q_proj", "v_proj"], "use_dora": True},
    "qlora": {"lora_attn_modules": ["q_proj", "v_proj"], "quantize_base": True},
    "llama_adapter": {"adapter": "v2"},
}
# Unpacked: two samples per batch, a new longest sample each time (padded to a multiple of 8).
UNPACKED = [(10, 13), (21, 17), (30, 9), (33, 40), (12, 50)]
# Packed: rows of 64 holding documents of these lengths (each row then padded to 64).
PACKED = [((10, 49), (30, 7)), ((21, 21, 22), (64,)), ((5, 5, 40), (33, 20))]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    # hidden 128 with as many key/value heads as heads: every weight fits NF4's 16384-element blocks.
    return tiny_model_folder(tmp_path_factory.mktemp("models"), "llama3_1", hidden_size=128, intermediate_size=256,
                             num_key_value_heads=4)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _model(folder, method: str):
    model = apply_peft(tunelib.models.from_hf_config(folder, **METHODS[method]))
    load_hf_weights(model, folder, dtype=torch.float32, device="cpu", transform=nf4_transform(model),
                    ignore_missing=is_adapter_key)
    if method != "full":
        initialize_adapters(model)
        set_trainable(model)
    return model.train()


def _ids(n: int, gen: torch.Generator) -> list[int]:
    return torch.randint(3, 500, (n,), generator=gen).tolist()


def _batches(packed: bool):
    gen = torch.Generator().manual_seed(0)
    if not packed:
        for lengths in UNPACKED:
            rows = [{"tokens": (t := _ids(n, gen)), "labels": t} for n in lengths]
            yield collate(rows, pad_to_multiple_of=8)
        return
    for pack in PACKED:
        rows = []
        for docs in pack:
            ids = [_ids(n, gen) for n in docs]
            rows.append({"tokens": sum(ids, []), "labels": sum(ids, []),
                         "document_ids": [i for i, d in enumerate(docs) for _ in range(d)],
                         "position_ids": [p for d in docs for p in range(d)]})
        yield collate(rows, pad_to=64)


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def _breaks() -> dict:
    return dict(counters["graph_break"])


@pytest.mark.slow
@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed"])
@pytest.mark.parametrize("method", list(METHODS))
def test_each_decoder_layer_is_one_graph_and_lengths_stop_adding_graphs(folder, method, packed):
    model = _model(folder, method)
    transforms.compile_layers(model, backend="aot_eager")  # fullgraph=True: a break would raise here
    loss_fn = LinearCrossEntropyLoss()
    graphs = []
    for batch in _batches(packed):
        batch.pop("num_tokens")
        loss_fn(model, batch).backward()
        graphs.append(_graphs())
    assert _breaks() == {}
    assert graphs[0] > 0
    # The first length is compiled as it is, the second makes the length symbolic; after that no
    # batch compiles anything new (packs all have one length: one graph set from the start).
    assert graphs[-1] == graphs[1], graphs
    assert graphs[-1] <= 2 * graphs[0], graphs


@pytest.mark.slow
def test_activation_checkpointing_keeps_whole_graphs(folder):
    model = _model(folder, "qlora")
    transforms.activation_checkpointing(model)
    transforms.compile_layers(model, backend="aot_eager")
    loss_fn = LinearCrossEntropyLoss()
    for batch in list(_batches(packed=False))[:3]:
        batch.pop("num_tokens")
        loss_fn(model, batch).backward()
    assert _breaks() == {} and _graphs() > 0


@pytest.mark.skipif(not flex.available(), reason="this torch has no flex_attention")
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed"])
def test_flex_attention_layers_compile_whole_for_every_packing_and_length(folder, packed):
    # Forward only: torch 2.13 has no flex attention backward on CPU (the GPU check runs it).
    model = _model(folder, "lora")
    model.attention_backend = "flex"
    transforms.compile_layers(model, backend="eager")
    graphs = []
    with torch.no_grad():
        for batch in _batches(packed):
            model(batch["input_ids"], position_ids=batch["position_ids"], document_ids=batch.get("document_ids"))
            graphs.append(_graphs())
    assert _breaks() == {}
    # A new packing is a new block mask, not a new graph; lengths as in the SDPA test above.
    assert graphs[-1] == graphs[1] <= 2 * graphs[0], graphs


def test_the_loss_chunk_compiles_whole():
    logits, labels = torch.randn(6, 32), torch.tensor([1, -100, 3, 4, -100, 31])
    explained = torch._dynamo.explain(chunk_cross_entropy)(logits.clone(), labels, -100, torch.float32)
    assert explained.graph_break_count == 0 and explained.graph_count == 1


def test_compile_compiles_the_loss_with_the_same_result():
    loss_fn = LinearCrossEntropyLoss(num_output_chunks=2)
    assert transforms.compile_loss(loss_fn) and loss_fn.chunk_cross_entropy is not chunk_cross_entropy
    # Inductor's code for it runs in the compile=True recipe test; here Dynamo only traces it.
    loss_fn.chunk_cross_entropy = torch.compile(chunk_cross_entropy, backend="aot_eager")
    hidden = torch.randn(8, 16, requires_grad=True)
    head = torch.nn.Linear(16, 40, bias=False)
    labels = torch.tensor([1, 2, -100, 4, 5, 6, -100, 39])
    compiled = loss_fn(_Stack(head), {"input_ids": hidden[None], "labels": labels[None]})
    compiled.backward()
    grads = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad = head.weight.grad = None
    eager = torch.nn.functional.cross_entropy(head(hidden), labels, ignore_index=-100, reduction="sum")
    eager.backward()
    assert _graphs() >= 1 and _breaks() == {}
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(grads, (hidden.grad, head.weight.grad))


class _Stack(torch.nn.Module):
    """A stand-in model whose `hidden` gives its input back, with a plain linear `lm_head`."""

    def __init__(self, head: torch.nn.Linear):
        super().__init__()
        self.lm_head = head

    def hidden(self, input_ids, **_):
        return input_ids
