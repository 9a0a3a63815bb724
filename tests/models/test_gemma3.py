"""Gemma 3's config.json as transformers writes and reads it, beyond the parity tests."""

from __future__ import annotations

import json

import pytest
import torch

from support.models import hf_config, load_hf_model, make_hf_model_folder
from tunelib.checkpoint import from_pretrained
from tunelib.errors import CheckpointError
from tunelib.models import config_from_dict, read_hf_config
from tunelib.models.gemma3 import layer_pattern


def test_released_and_transformers_5_rope_layouts_read_the_same(hf_folder):
    # transformers 5 writes rope_parameters per layer type; the released files write rope_theta,
    # rope_scaling and rope_local_base_freq.
    folder = hf_folder("gemma3")
    hf = json.loads((folder / "config.json").read_text())
    assert set(hf["rope_parameters"]) == {"full_attention", "sliding_attention"}
    released = {k: v for k, v in hf.items() if k != "rope_parameters"}
    released.update(rope_theta=50000.0, rope_local_base_freq=500.0, rope_scaling={"rope_type": "linear", "factor": 8.0})
    config = read_hf_config(folder)
    assert config_from_dict(released) == config
    assert (config.rope_theta, config.rope_local_base_freq, config.rope_scaling["factor"]) == (50000.0, 500.0, 8.0)


def test_layer_types_default_to_five_sliding_then_one_global():
    assert layer_pattern(12) == (("sliding_attention",) * 5 + ("full_attention",)) * 2
    hf = {"architectures": ["Gemma3ForCausalLM"], "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96,
          "num_hidden_layers": 8, "num_attention_heads": 4, "sliding_window_pattern": 4, "sliding_window": 16}
    assert config_from_dict(hf).layer_types == (("sliding_attention",) * 3 + ("full_attention",)) * 2


def test_attention_softcap_in_config_is_ignored_as_transformers_ignores_it(tmp_path, token_ids):
    # transformers' Gemma 3 stores attn_logit_softcapping but never applies it; our logits are its logits.
    folder = make_hf_model_folder(tmp_path / "g3", "gemma3", attn_logit_softcapping=0.5)
    with torch.no_grad():
        ours = from_pretrained(folder)(token_ids)
        theirs = load_hf_model(folder)(token_ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert from_pretrained(folder).config.attn_logit_softcapping is None


def test_bidirectional_embedding_models_are_refused(hf_folder):
    hf = json.loads((hf_folder("gemma3") / "config.json").read_text())
    with pytest.raises(CheckpointError, match="use_bidirectional_attention"):
        config_from_dict({**hf, "use_bidirectional_attention": True}, "embeddinggemma/config.json")


def test_text_decoder_of_a_multimodal_folder_extracted_as_docs_say_gives_its_logits(tmp_path, token_ids):
    # docs/models.md: Gemma 3 4B+ ship as Gemma3ForConditionalGeneration; this is its recipe for
    # a text-only Gemma3ForCausalLM folder. Published Gemma 3 has no final soft-cap, which
    # transformers' multimodal class would not apply.
    transformers = pytest.importorskip("transformers")
    from transformers import Gemma3ForCausalLM, Gemma3ForConditionalGeneration

    text_config = hf_config("gemma3", final_logit_softcapping=None)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    torch.manual_seed(0)
    config = transformers.Gemma3Config(text_config=text_config.to_dict(), vision_config=vision, mm_tokens_per_image=4)
    Gemma3ForConditionalGeneration(config).save_pretrained(tmp_path / "multimodal")

    full = Gemma3ForConditionalGeneration.from_pretrained(tmp_path / "multimodal")
    with torch.device("meta"):
        text = Gemma3ForCausalLM(full.config.text_config)
    text.model.load_state_dict(full.model.language_model.state_dict(), assign=True)
    text.tie_weights()
    text.save_pretrained(tmp_path / "text")

    with torch.no_grad():
        ours = from_pretrained(tmp_path / "text")(token_ids)
        theirs = full.eval()(input_ids=token_ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
