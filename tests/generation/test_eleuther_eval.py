"""`tune run eleuther_eval` through lm-evaluation-harness on small local tasks the test writes:
nothing is downloaded, limit and batch_size are honoured, and the scores equal what
transformers' logits give on the same tokens."""

from __future__ import annotations

import json
import socket

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is the optional extra `eval`")

ROWS = [{"question": f"What is {a} plus {b}?", "choices": [str(a + b), str(a + b + 1), str(a * b + 3)],
         "label": (a + b) % 3} for a in range(1, 5) for b in range(1, 4)]

MULTIPLE_CHOICE = """task: tiny_sums
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
"""

GENERATION = """task: tiny_sums_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices[0]}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""


@pytest.fixture
def tasks(tmp_path):
    """A folder with two task YAMLs over one local JSON-lines file."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    data = folder / "sums.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    (folder / "tiny_sums.yaml").write_text(MULTIPLE_CHOICE.format(data=data))
    (folder / "tiny_sums_gen.yaml").write_text(GENERATION.format(data=data))
    return folder


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test: nothing may be downloaded. The Hub's
    client is in offline mode too, as HF_HUB_OFFLINE=1 puts it, so tune does not check whether
    the Hub can be reached (that check would be a connection)."""
    import datasets.config
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def evaluate(tune, folder, tasks, *overrides):
    return tune("run", "eleuther_eval", "--config", "eleuther_evaluation", f"checkpoint_dir={folder}",
                f"include_path={tasks}", "device=cpu", "dtype=fp32", *overrides)


@pytest.mark.slow
def test_local_tasks_run_with_limit_and_batch_size(tune, trained, tasks, tmp_path, no_network, monkeypatch):
    from tunelib.generation import harness

    batches = []
    score = harness.TunelibLM._score
    monkeypatch.setattr(harness.TunelibLM, "_score", lambda self, pairs: batches.append(len(pairs)) or score(self, pairs))
    results_file = tmp_path / "results.json"
    code, out, err = evaluate(tune, trained.base, tasks, "tasks=[tiny_sums,tiny_sums_gen]", "limit=5",
                              "batch_size=4", f"output_path={results_file}")
    assert code == 0, err
    assert "tiny_sums" in out and "acc" in out and "exact_match" in out  # the table
    results = json.loads(results_file.read_text())
    assert results["n-samples"]["tiny_sums"]["effective"] == 5
    assert results["n-samples"]["tiny_sums_gen"]["effective"] == 5
    # 5 questions x 3 choices = 15 log-likelihoods, in batches of at most 4.
    assert sum(batches) == 15 and max(batches) == 4
    assert 0 <= results["results"]["tiny_sums"]["acc,none"] <= 1


def test_scores_equal_transformers_logits(trained):
    """Log-likelihoods (batched, padded), rolling log-likelihoods and greedy generation of the
    harness model against transformers on the same token ids."""
    from lm_eval.api.instance import Instance

    from support.models import load_hf_model
    from tunelib.generation import harness, load_model
    from tunelib.tokenizers import from_pretrained

    tokenizer = from_pretrained(trained.base)
    lm = harness.TunelibLM(load_model(trained.base, dtype="fp32", device="cpu").model, tokenizer, batch_size=2)
    hf = load_hf_model(trained.base)

    def logprobs(ids):  # (len(ids) - 1, vocab): log p of each next token
        with torch.no_grad():
            return torch.log_softmax(hf(torch.tensor([ids])).logits[0, :-1].float(), dim=-1)

    pairs = [("Question: What is 2 plus 2?\nAnswer:", " 4"), ("Hi", " there, how are you today?"),
             ("The cat sat on the", " mat")]
    got = lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)],
                           disable_tqdm=True)
    for (context, continuation), (total, greedy) in zip(pairs, got):
        context_ids = tokenizer.encode(context, add_bos=False, add_eos=False)
        whole = tokenizer.encode(context + continuation, add_bos=False, add_eos=False)
        target = whole[len(context_ids):]
        scores = logprobs(whole)[len(context_ids) - 1:]
        expected = scores.gather(-1, torch.tensor(target)[:, None]).sum().item()
        assert total == pytest.approx(expected, abs=1e-4)
        assert greedy == bool((scores.argmax(-1) == torch.tensor(target)).all())

    text = "A longer text whose probability is scored token by token."
    (rolling,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    ids = [tokenizer.bos_id] + tokenizer.encode(text, add_bos=False, add_eos=False)
    expected = logprobs(ids).gather(-1, torch.tensor(ids[1:])[:, None]).sum().item()
    assert rolling == pytest.approx(expected, abs=1e-4)

    prompt = "Question: What is 1 plus 1?\nAnswer:"
    (answer,) = lm.generate_until([Instance("generate_until", {}, (prompt, {"until": ["\n"], "max_gen_toks": 6,
                                                                            "do_sample": False}), 0)],
                                  disable_tqdm=True)
    ids = tokenizer.encode(prompt, add_bos=False, add_eos=False)
    new = []
    for _ in range(6):
        token = int(logprobs(ids + new + [0])[-1].argmax())
        if token in tokenizer.stop_tokens:
            break
        new.append(token)
    assert answer == tokenizer.decode(new, skip_special_tokens=True).split("\n")[0]


@pytest.mark.slow
def test_adapters_and_quantized_folders_are_evaluated(tune, trained, tasks, tmp_path, no_network):
    results = {}
    for name, where in {"base": [], "lora": [f"adapter_dir={trained.lora / 'adapter'}"],
                        "adapter_v2": [f"adapter_dir={trained.adapter_v2}"]}.items():
        path = tmp_path / f"{name}.json"
        code, out, err = evaluate(tune, trained.base, tasks, "tasks=tiny_sums", "limit=4", f"output_path={path}",
                                  *where)
        assert code == 0, err
        assert ("+ adapter " in out) == (name != "base")  # what was loaded is named
        results[name] = json.loads(path.read_text())["results"]["tiny_sums"]
    assert all(0 <= r["acc,none"] <= 1 for r in results.values())

    quantized = tmp_path / "int8"
    assert tune("run", "quantize", "--config", "quantization", f"checkpoint_dir={trained.full}",
                f"output_dir={quantized}", "device=cpu")[0] == 0
    code, out, err = tune("run", "eleuther_eval", "--config", "eleuther_evaluation", f"checkpoint_dir={quantized}",
                          f"include_path={tasks}", "device=cpu", "tasks=[tiny_sums]", "limit=4")
    assert code == 0, err
    assert "Int8WeightOnlyConfig" in out


@pytest.mark.parametrize("overrides, message", [
    (["tasks=[]"], "tasks is empty"),
    (["tasks=[tiny_sums]", "batch_size=0"], "batch_size=0"),
    (["tasks=[tiny_sums]", "limit=0"], "limit=0"),
])
def test_bad_input_is_one_line_and_exit_2(tune, trained, tasks, overrides, message):
    code, out, err = evaluate(tune, trained.base, tasks, *overrides)
    assert code == 2
    assert err.startswith("tune: error: ") and err.count("\n") == 1 and message in err, err


def test_an_unknown_task_is_named_with_the_closest_ones(tune, trained, tasks, monkeypatch):
    import lm_eval.tasks

    class Tasks:  # lm-eval's TaskManager, without indexing its thousands of built-in tasks (20 s)
        def __init__(self, include_path=None, include_defaults=True):
            self.all_tasks = ["tiny_sums", "tiny_sums_gen"] + (["hellaswag", "arc_easy"] if include_defaults else [])

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", Tasks)
    code, out, err = evaluate(tune, trained.base, tasks, "tasks=[tiny_sums,hellaswg]")
    assert code == 2 and err.count("\n") == 1
    assert "unknown lm-eval task 'hellaswg' (did you mean hellaswag" in err


def test_without_lm_eval_the_error_says_what_to_install(tune, trained, tasks, monkeypatch):
    import sys

    import tunelib.generation

    for name in [name for name in sys.modules if name.split(".")[0] == "lm_eval"] + ["lm_eval"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "tunelib.generation.harness", raising=False)
    monkeypatch.delattr(tunelib.generation, "harness", raising=False)
    code, out, err = evaluate(tune, trained.base, tasks, "tasks=[tiny_sums]")
    assert code == 2 and "pip install 'tunelib[eval]'" in err
