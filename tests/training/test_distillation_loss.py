"""Distillation losses: each equals a plain full-vocabulary computation, and never makes full logits.

Reference: both models' logits for the whole batch at once, log-softmax, and PyTorch's own
`F.kl_div` (the JSD mixture made with log(beta p + (1 - beta) q)), summed over the trained
positions; the generalized JSD also against TRL's GKDTrainer.generalized_jsd_loss.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from support.models import make_hf_model_folder
from tunelib.checkpoint import from_pretrained
from tunelib.errors import ConfigError
from tunelib.training import ForwardKLLoss, JSDLoss, ReverseKLLoss, SymmetricKLLoss

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Students with a plain (llama3) and a soft-capped (gemma2) head, and a teacher of another family."""
    root = tmp_path_factory.mktemp("kd")
    load = lambda family, **kw: from_pretrained(make_hf_model_folder(root / family, family, **kw)).float()  # noqa: E731
    return {"llama3": load("llama3"), "gemma2": load("gemma2"), "teacher": load("qwen2", seed=1, hidden_size=96)}


def batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and shifted labels (3, 10): one row with a prompt, one with padding, one all trained."""
    ids = torch.randint(0, vocab, (3, 10), generator=torch.Generator().manual_seed(2))
    labels = ids.roll(-1, dims=1)
    labels[:, -1] = -100
    labels[0, :4] = -100
    labels[1, 6:] = -100
    return ids, labels


def plain(name: str, ratio: float, student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
    """Per-token divergence (N, T) from full log-probabilities (N, T, V), written with F.kl_div."""
    def kl(p, q):  # KL(p || q) from log-probabilities; F.kl_div takes (log q, log p)
        return F.kl_div(q, p, reduction="none", log_target=True).sum(-1)

    s, t = student_log_probs, teacher_log_probs
    if name == "forward":
        return kl(t, s)
    if name == "reverse":
        return kl(s, t)
    if name == "symmetric":
        return ratio * kl(t, s) + (1 - ratio) * kl(s, t)
    m = torch.log(ratio * t.exp() + (1 - ratio) * s.exp())
    return ratio * kl(t, m) + (1 - ratio) * kl(s, m)


LOSSES = {
    "forward": lambda chunks, ratio: ForwardKLLoss(num_output_chunks=chunks),
    "reverse": lambda chunks, ratio: ReverseKLLoss(num_output_chunks=chunks),
    "symmetric": lambda chunks, ratio: SymmetricKLLoss(num_output_chunks=chunks, sym_kl_ratio=ratio),
    "jsd": lambda chunks, ratio: JSDLoss(num_output_chunks=chunks, beta=ratio),
}


def _value_and_grads(fn, model):
    model.zero_grad()
    value = fn()
    (value * 0.7).backward()
    return value.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("name", "ratio"), [("forward", None), ("reverse", None), ("symmetric", 0.3),
                                             ("jsd", 0.5), ("jsd", 0.1)])
@pytest.mark.parametrize(("student_name", "chunks"), [("llama3", 1), ("llama3", 4), ("gemma2", 3)])
def test_loss_and_student_gradients_equal_full_vocabulary(models, name, ratio, student_name, chunks):
    student, teacher = models[student_name], models["teacher"]
    ids, labels = batch(student.config.vocab_size)
    with torch.no_grad():
        teacher_hidden = teacher.hidden(ids)
        teacher_log_probs = teacher(ids).float().log_softmax(-1)

    def reference():
        per_token = plain(name, ratio, student(ids).float().log_softmax(-1), teacher_log_probs)
        return (per_token * (labels != -100)).sum()

    loss = LOSSES[name](chunks, ratio)
    want, want_grads = _value_and_grads(reference, student)
    got, got_grads = _value_and_grads(lambda: loss(student, student.hidden(ids), teacher, teacher_hidden, labels),
                                      student)
    assert got.dtype == torch.float32 and got.dim() == 0 and got > 0.1  # far from zero: the models differ
    torch.testing.assert_close(got, want, **TOL)
    assert got_grads.keys() == want_grads.keys()
    for n in want_grads:
        torch.testing.assert_close(got_grads[n], want_grads[n], rtol=1e-4, atol=1e-6, msg=n)
    assert all(p.grad is None for p in teacher.parameters())


def test_jsd_equals_trl_generalized_jsd(models):
    from trl.experimental.gkd import GKDTrainer

    student, teacher = models["llama3"], models["teacher"]
    ids, labels = batch(student.config.vocab_size)
    with torch.no_grad():
        for beta in (0.0, 0.2, 0.5, 1.0):
            got = JSDLoss(beta=beta)(student, student.hidden(ids), teacher, teacher.hidden(ids), labels)
            want = GKDTrainer.generalized_jsd_loss(student(ids), teacher(ids), labels=labels, beta=beta,
                                                   reduction="sum")
            torch.testing.assert_close(got, want, **TOL)
            if beta == 0.5:
                assert got < math.log(2) * (labels != -100).sum()  # symmetric JSD is at most ln 2 per token


def test_divergences_of_a_model_with_itself_are_zero(models):
    student = models["gemma2"]
    ids, labels = batch(student.config.vocab_size)
    with torch.no_grad():
        hidden = student.hidden(ids)
        for name in LOSSES:
            assert abs(LOSSES[name](2, 0.5)(student, hidden, student, hidden, labels).item()) < 1e-5


def test_ignore_index_and_host_indices(models):
    student, teacher = models["llama3"], models["teacher"]
    ids, labels = batch(student.config.vocab_size)
    loss = ForwardKLLoss(num_output_chunks=2)
    with torch.no_grad():
        s, t = student.hidden(ids), teacher.hidden(ids)
        want = loss(student, s, teacher, t, labels)
        # Every position sent through (a GPU without host indices): the ignored ones count for nothing.
        everything = loss(student, s, teacher, t, labels, trained_rows=torch.arange(labels.numel()))
        torch.testing.assert_close(everything, want, **TOL)
        # Another ignore label, given at the call.
        relabelled = torch.where(labels == -100, -1, labels)
        torch.testing.assert_close(loss(student, s, teacher, t, relabelled, ignore_index=-1), want, **TOL)
        assert loss(student, s, teacher, t, torch.full_like(labels, -100)).item() == 0


def test_teacher_with_another_vocabulary_is_refused(models, tmp_path):
    student = models["llama3"]
    teacher = from_pretrained(make_hf_model_folder(tmp_path / "t", "qwen2", vocab_size=160)).float()
    ids, labels = batch(student.config.vocab_size)
    with pytest.raises(ConfigError, match="teacher vocabulary 160 != student vocabulary 128"):
        ForwardKLLoss()(student, student.hidden(ids), teacher, teacher.hidden(ids), labels)


@pytest.mark.parametrize(("make", "says"), [
    (lambda: SymmetricKLLoss(sym_kl_ratio=1.5), "SymmetricKLLoss sym_kl_ratio=1.5: must be in [0, 1]"),
    (lambda: JSDLoss(beta=-0.1), "JSDLoss beta=-0.1: must be in [0, 1]"),
    (lambda: ForwardKLLoss(num_output_chunks=0), "ForwardKLLoss num_output_chunks=0"),
])
def test_bad_settings_are_refused_in_one_line(make, says):
    with pytest.raises(ConfigError) as e:
        make()
    assert str(e.value).startswith(says) and "\n" not in str(e.value)


def test_torchtune_names_build_these_losses():
    from tunelib.config import torchtune_names

    node = torchtune_names.translate_node({"_component_": "torchtune.modules.loss.SymmetricKLWithChunkedOutputLoss",
                                           "num_output_chunks": 4, "sym_kd_ratio": 0.25})
    assert node == {"_component_": "tunelib.training.SymmetricKLLoss", "num_output_chunks": 4, "sym_kl_ratio": 0.25}
    for name, ours in [("ForwardKLWithChunkedOutputLoss", "ForwardKLLoss"), ("ReverseKLLoss", "ReverseKLLoss")]:
        assert torchtune_names.equivalent(f"torchtune.modules.loss.{name}").path == f"tunelib.training.{ours}"


# --- memory: no op makes a tensor as large as the full logits, and backward keeps no logits -----------

class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op returns while active (CPU's allocator keeps no peak)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        sizes = [t.numel() * t.element_size() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        self.largest = max([self.largest, *sizes])
        return out


def saved_for_backward(fn) -> tuple[torch.Tensor, int]:
    """Run fn(); return its result and the bytes autograd kept for backward outside checkpointed regions."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(saved)


def test_chunked_loss_never_makes_full_logits(tmp_path):
    vocab = 8192
    student = from_pretrained(make_hf_model_folder(tmp_path / "s", "llama3", vocab_size=vocab)).float()
    teacher = from_pretrained(make_hf_model_folder(tmp_path / "t", "llama3", seed=1, vocab_size=vocab)).float()
    ids = torch.randint(0, vocab, (4, 64), generator=torch.Generator().manual_seed(0))
    labels = ids.roll(-1, dims=1)
    labels[:, -1] = -100
    full_logits = int((labels != -100).sum()) * vocab * 4  # fp32 logits of the trained positions, one model
    with torch.no_grad():
        teacher_hidden = teacher.hidden(ids)
    student_hidden = student.hidden(ids)

    def measured(loss_fn):
        watch = LargestTensor()
        with watch:
            value, saved = saved_for_backward(loss_fn)
            value.backward(retain_graph=False)
        return watch.largest, saved

    def naive():  # the reference computation: must trip both measures, or they measure nothing
        s = student.logits(student_hidden).float().log_softmax(-1)
        t = teacher.logits(teacher_hidden).float().log_softmax(-1)
        return (F.kl_div(s, t, reduction="none", log_target=True).sum(-1) * (labels != -100)).sum()

    largest, saved = measured(naive)
    assert largest >= full_logits and saved >= full_logits
    largest, saved = measured(lambda: ForwardKLLoss(num_output_chunks=8)(
        student, student_hidden.detach().requires_grad_(), teacher, teacher_hidden, labels))
    assert largest < full_logits / 2, (largest, full_logits)
    assert saved < full_logits / 16, (saved, full_logits)
