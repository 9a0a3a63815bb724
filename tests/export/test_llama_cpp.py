"""The exported file loaded by llama.cpp itself (through llama-cpp-python) gives tunelib's logits.

llama-cpp-python compiles llama.cpp from source when installed (0.3.36: 20 to 60 minutes on 2 busy
CPU cores), so it is not in the `dev` extra: `pip install llama-cpp-python` to run these tests;
without it they skip, saying so. Each family's tiny model covers what its export must get
right: Llama's q/k permutation, Llama 3.1's RoPE factors and a head_dim that is not
hidden/heads (llama3_2), biases (qwen2), q/k norms (qwen3), Gemma's norm offset and embedding
scale (gemma), soft-caps, sandwich norms and a 4-token sliding window (gemma2), fused
projections (phi3), SentencePiece and BPE vocabularies.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("gguf")
llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python; it compiles llama.cpp)")

pytestmark = pytest.mark.slow
GGML_TYPE_F32 = 0

# family -> config overrides: llama.cpp runs Mistral and Phi-3 without a sliding window, and
# scales Gemma 2's scores by head_dim, so the tiny models use settings llama.cpp can express.
CASES = {"llama3_2": {}, "llama2": {}, "mistral": {"sliding_window": None}, "qwen2": {}, "qwen3": {},
         "gemma": {}, "gemma2": {"query_pre_attn_scalar": 32}, "phi3": {"sliding_window": None}}


@pytest.mark.parametrize("family", CASES)
def test_llama_cpp_logits_match_tunelib(family, tiny, tmp_path):
    from tunelib.checkpoint import from_pretrained
    from tunelib.export import export_gguf

    folder = tiny(family, **CASES[family])
    export_gguf(folder, tmp_path / "m.gguf", outtype="f32")
    ids = torch.randint(3, 500, (12,), generator=torch.Generator().manual_seed(0)).tolist()

    ours = from_pretrained(folder, dtype=torch.float32)(torch.tensor([ids]))[0].detach().numpy()
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=32, n_batch=32, logits_all=True,
                          type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, n_threads=2, verbose=False)
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)], dtype=np.float32)

    assert theirs.shape == ours.shape
    np.testing.assert_allclose(theirs, ours, atol=2e-3 * np.abs(ours).max(), rtol=0)
    assert (theirs.argmax(-1) == ours.argmax(-1)).all()  # the same greedy tokens


def test_q8_0_stays_close(tiny, tmp_path, monkeypatch):
    # llama.cpp 0.3.36's AMX weight repacking (Intel Xeons with AMX) crashes on q8_0 tensors,
    # its own quantization of our f32 file included: load without repacking, as the f32 files are.
    default = llama_cpp.llama_cpp.llama_model_default_params

    def without_repacking():
        params = default()
        params.use_extra_bufts = False
        return params

    monkeypatch.setattr(llama_cpp.llama_cpp, "llama_model_default_params", without_repacking)
    from tunelib.checkpoint import from_pretrained
    from tunelib.export import export_gguf

    folder = tiny("llama3_2")
    export_gguf(folder, tmp_path / "q.gguf", outtype="q8_0")
    ids = torch.randint(3, 500, (12,), generator=torch.Generator().manual_seed(1)).tolist()
    ours = from_pretrained(folder, dtype=torch.float32)(torch.tensor([ids]))[0].detach().numpy()
    llm = llama_cpp.Llama(model_path=str(tmp_path / "q.gguf"), n_ctx=32, n_batch=32, logits_all=True,
                          n_threads=2, verbose=False)
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
    error = np.abs(theirs - ours).max() / np.abs(ours).max()
    assert 0 < error < 0.05  # 8-bit weights: close, not equal
