"""Preference losses against Hugging Face TRL, and sequence log-probs against a full log-softmax.

Reference: TRL 1.16's own loss code, called as methods with a minimal stand-in for the
trainer (`self`): DPOTrainer._compute_loss for "sigmoid", "ipo" and "hinge" (fed per-token
log-probs by a stand-in model), CPOTrainer.cpo_loss for SimPO and for DPO with label
smoothing (TRL 1.x's DPOTrainer dropped smoothing from "sigmoid"; CPO's "sigmoid" on log-ratios
is the conservative DPO loss), ORPOTrainer.odds_ratio_loss plus ORPO's NLL. TRL averages
losses over pairs; tunelib returns them per pair, so the reference is `losses.mean()`.
"""

from __future__ import annotations

import os
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from support.models import make_hf_model_folder
from tunelib.checkpoint import from_pretrained
from tunelib.errors import ConfigError
from tunelib.peft import apply_peft
from tunelib.training import (
    DPOLoss,
    HingeLoss,
    IPOLoss,
    ORPOLoss,
    SimPOLoss,
    sequence_log_probs,
)

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
PAIRS = 5
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def trl_trainers():
    """TRL's trainer classes (imported late: importing TRL takes seconds)."""
    from trl import DPOTrainer
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    return SimpleNamespace(dpo=DPOTrainer, cpo=CPOTrainer, orpo=ORPOTrainer)


def random_pairs(seed: int = 0, equal_chosen_lengths: bool = False) -> dict[str, torch.Tensor]:
    """Summed log-probs (B,) of policy and reference, and token counts (B,), of random answers."""
    g = torch.Generator().manual_seed(seed)
    chosen_tokens = torch.full((PAIRS,), 7) if equal_chosen_lengths else torch.randint(1, 20, (PAIRS,), generator=g)
    rejected_tokens = torch.randint(1, 20, (PAIRS,), generator=g)

    def sums(tokens):  # between -3 and -0.05 nats per token
        return -(tokens * (0.05 + 2.95 * torch.rand(PAIRS, generator=g))).float()

    return {"policy_chosen": sums(chosen_tokens).requires_grad_(),
            "policy_rejected": sums(rejected_tokens).requires_grad_(),
            "reference_chosen": sums(chosen_tokens), "reference_rejected": sums(rejected_tokens),
            "chosen_tokens": chosen_tokens, "rejected_tokens": rejected_tokens}


def ours(loss, pairs) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], object]:
    """(mean loss, its gradients by the policy sums, the PreferenceTerms)."""
    terms = loss(pairs["policy_chosen"], pairs["policy_rejected"], pairs["reference_chosen"],
                 pairs["reference_rejected"], chosen_tokens=pairs["chosen_tokens"],
                 rejected_tokens=pairs["rejected_tokens"])
    assert terms.losses.shape == terms.chosen_rewards.shape == terms.rejected_rewards.shape == (PAIRS,)
    assert not terms.chosen_rewards.requires_grad and not terms.rejected_rewards.requires_grad
    mean = terms.losses.sum() / PAIRS  # as the loop does: sum over pairs, divided by the pair count
    return mean, _grads(mean, pairs), terms


def _grads(loss, pairs):
    return torch.autograd.grad(loss, (pairs["policy_chosen"], pairs["policy_rejected"]), retain_graph=True)


# --- TRL's DPOTrainer, with stand-ins for the trainer and for its fused-head model -----------------

class _Accelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather(tensor):
        return tensor

    gather_for_metrics = gather


def _dpo_trainer(loss_type: str, beta: float, model) -> SimpleNamespace:
    """The attributes DPOTrainer._compute_loss reads, for one loss type and precomputed references."""
    return SimpleNamespace(model=model, accelerator=_Accelerator(), ld_alpha=None, precompute_ref_logps=True,
                           ref_model=None, f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0],
                           beta=beta, label_smoothing=0.0, use_weighting=False, aux_loss_enabled=False,
                           _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                           _total_train_tokens=0, _tp_size=1)


class _GivenLogProbs(torch.nn.Module):
    """Answers `model(..., fused_lm_head=True)` with per-token log-probs whose row sums are given."""

    def __init__(self, sums: torch.Tensor, width: int):
        super().__init__()
        self.per_token = torch.cat([sums[:, None], sums.new_zeros(sums.shape[0], width - 1)], dim=1)

    def forward(self, *, labels, fused_lm_head, **kwargs):
        zeros = torch.zeros_like(self.per_token.detach())
        return SimpleNamespace(log_probs=self.per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())


def trl_dpo(trainers, loss_type: str, beta: float, pairs) -> tuple[torch.Tensor, dict]:
    """DPOTrainer's loss and logged metrics for the given sums, through its own _compute_loss."""
    counts = torch.cat([pairs["chosen_tokens"], pairs["rejected_tokens"]])  # (2B,): the batch is [chosen, rejected]
    width = int(counts.max()) + 2
    completion_mask = (torch.arange(width)[None] >= width - counts[:, None]).long()  # answers at the end of each row
    model = _GivenLogProbs(torch.cat([pairs["policy_chosen"], pairs["policy_rejected"]]), width - 1)
    inputs = {"input_ids": torch.zeros_like(completion_mask), "attention_mask": torch.ones_like(completion_mask),
              "completion_mask": completion_mask, "ref_chosen_logps": pairs["reference_chosen"],
              "ref_rejected_logps": pairs["reference_rejected"]}
    trainer = _dpo_trainer(loss_type, beta, model)
    loss = trainers.dpo._compute_loss(trainer, model, inputs, False)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}


def check_logged_rewards(terms, metrics):
    chosen, rejected = terms.chosen_rewards, terms.rejected_rewards
    torch.testing.assert_close(chosen.mean().item(), metrics["rewards/chosen"], **TOL)
    torch.testing.assert_close(rejected.mean().item(), metrics["rewards/rejected"], **TOL)
    torch.testing.assert_close((chosen - rejected).mean().item(), metrics["rewards/margins"], **TOL)
    assert (chosen > rejected).float().mean().item() == metrics["rewards/accuracies"]


@pytest.mark.parametrize(("loss", "loss_type", "beta"), [
    (DPOLoss(beta=0.1), "sigmoid", 0.1),
    (DPOLoss(beta=0.5), "sigmoid", 0.5),
    (IPOLoss(tau=0.1), "ipo", 0.1),
    (IPOLoss(tau=0.02), "ipo", 0.02),
    (HingeLoss(gamma=0.1), "hinge", 0.1),
    (HingeLoss(gamma=0.3), "hinge", 0.3),
])
def test_reference_losses_equal_trl_dpo_trainer(trl_trainers, loss, loss_type, beta):
    pairs = random_pairs()
    got, got_grads, terms = ours(loss, pairs)
    want, metrics = trl_dpo(trl_trainers, loss_type, beta, pairs)
    torch.testing.assert_close(got, want, **TOL)
    for g, w in zip(got_grads, _grads(want, pairs)):
        torch.testing.assert_close(g, w, **TOL)
    check_logged_rewards(terms, metrics)
    if loss_type == "hinge":  # some pairs past the margin, some not: both sides of the hinge are checked
        assert 0 < (terms.losses > 0).sum() < PAIRS


# --- TRL's CPOTrainer (SimPO; DPO's conservative label smoothing) and ORPOTrainer --------------------

def trl_cpo(trainers, loss_type, beta, label_smoothing, chosen, rejected, simpo_gamma=0.5):
    trainer = SimpleNamespace(alpha=0.0, beta=beta, label_smoothing=label_smoothing, loss_type=loss_type,
                              simpo_gamma=simpo_gamma, accelerator=_Accelerator())
    return trainers.cpo.cpo_loss(trainer, chosen, rejected)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.3])
def test_dpo_label_smoothing_equals_trl_conservative_sigmoid(trl_trainers, label_smoothing):
    pairs = random_pairs(seed=1)
    got, got_grads, terms = ours(DPOLoss(beta=0.2, label_smoothing=label_smoothing), pairs)
    losses, chosen_rewards, rejected_rewards = trl_cpo(
        trl_trainers, "sigmoid", 0.2, label_smoothing, pairs["policy_chosen"] - pairs["reference_chosen"],
        pairs["policy_rejected"] - pairs["reference_rejected"])
    torch.testing.assert_close(got, losses.mean(), **TOL)
    for g, w in zip(got_grads, _grads(losses.mean(), pairs)):
        torch.testing.assert_close(g, w, **TOL)
    torch.testing.assert_close(terms.chosen_rewards, chosen_rewards, **TOL)
    torch.testing.assert_close(terms.rejected_rewards, rejected_rewards, **TOL)


def test_label_smoothing_changes_the_dpo_loss():
    pairs = random_pairs(seed=1)
    plain, _, _ = ours(DPOLoss(beta=0.2), pairs)
    smoothed, _, _ = ours(DPOLoss(beta=0.2, label_smoothing=0.3), pairs)
    assert abs(plain.item() - smoothed.item()) > 1e-3


@pytest.mark.parametrize(("beta", "gamma", "label_smoothing"), [(2.0, 0.5, 0.0), (2.5, 1.2, 0.0), (2.0, 0.5, 0.2)])
def test_simpo_equals_trl_cpo_trainer(trl_trainers, beta, gamma, label_smoothing):
    pairs = random_pairs(seed=2)
    got, got_grads, terms = ours(SimPOLoss(beta=beta, gamma=gamma, label_smoothing=label_smoothing), pairs)
    # CPOTrainer gets per-token averages for "simpo" (get_batch_logps with average_log_prob=True).
    losses, chosen_rewards, rejected_rewards = trl_cpo(
        trl_trainers, "simpo", beta, label_smoothing, pairs["policy_chosen"] / pairs["chosen_tokens"],
        pairs["policy_rejected"] / pairs["rejected_tokens"], simpo_gamma=gamma)
    torch.testing.assert_close(got, losses.mean(), **TOL)
    for g, w in zip(got_grads, _grads(losses.mean(), pairs)):
        torch.testing.assert_close(g, w, **TOL)
    torch.testing.assert_close(terms.chosen_rewards, chosen_rewards, **TOL)
    torch.testing.assert_close(terms.rejected_rewards, rejected_rewards, **TOL)


@pytest.mark.parametrize("pass_nll", [False, True])
def test_orpo_equals_trl_orpo_trainer(trl_trainers, pass_nll):
    # TRL's NLL is one mean over the batch's chosen tokens; equal chosen lengths make it the mean of ours.
    pairs = random_pairs(seed=3, equal_chosen_lengths=True)
    chosen_avg = pairs["policy_chosen"] / pairs["chosen_tokens"]
    rejected_avg = pairs["policy_rejected"] / pairs["rejected_tokens"]
    loss = ORPOLoss(beta=0.2)
    if pass_nll:  # what the lead's objective passes: -(sum log p) / tokens per chosen answer
        terms = loss(pairs["policy_chosen"], pairs["policy_rejected"], chosen_tokens=pairs["chosen_tokens"],
                     rejected_tokens=pairs["rejected_tokens"], chosen_nll=-chosen_avg)
        got, got_grads = terms.losses.sum() / PAIRS, _grads(terms.losses.sum() / PAIRS, pairs)
    else:
        got, got_grads, terms = ours(loss, pairs)
    trainer = SimpleNamespace(beta=0.2, accelerator=_Accelerator())
    losses, chosen_rewards, rejected_rewards, *_ = trl_trainers.orpo.odds_ratio_loss(trainer, chosen_avg, rejected_avg)
    nll = -pairs["policy_chosen"].sum() / pairs["chosen_tokens"].sum()  # cross-entropy over all chosen tokens
    want = nll - losses.mean()  # ORPOTrainer.get_batch_loss_metrics
    torch.testing.assert_close(got, want, **TOL)
    for g, w in zip(got_grads, _grads(want, pairs)):
        torch.testing.assert_close(g, w, **TOL)
    torch.testing.assert_close(terms.chosen_rewards, chosen_rewards, **TOL)
    torch.testing.assert_close(terms.rejected_rewards, rejected_rewards, **TOL)


def test_what_each_loss_needs():
    assert [cls.needs_reference for cls in (DPOLoss, IPOLoss, HingeLoss, SimPOLoss, ORPOLoss)] == \
        [True, True, True, False, False]
    assert [cls.length_normalized for cls in (DPOLoss, IPOLoss, HingeLoss, SimPOLoss, ORPOLoss)] == \
        [False, True, False, True, True]
    pairs = random_pairs()
    with pytest.raises(ValueError, match="reference_chosen"):
        DPOLoss()(pairs["policy_chosen"], pairs["policy_rejected"])
    with pytest.raises(ValueError, match="chosen_tokens"):
        SimPOLoss()(pairs["policy_chosen"], pairs["policy_rejected"])


@pytest.mark.parametrize(("make", "says"), [
    (lambda: DPOLoss(beta=0), "DPOLoss beta=0: must be greater than 0"),
    (lambda: DPOLoss(label_smoothing=0.5), "DPOLoss label_smoothing=0.5: must be in [0, 0.5)"),
    (lambda: IPOLoss(tau=-1), "IPOLoss tau=-1"),
    (lambda: HingeLoss(gamma=0), "HingeLoss gamma=0"),
    (lambda: SimPOLoss(gamma=-0.5), "SimPOLoss gamma=-0.5"),
    (lambda: ORPOLoss(beta=0), "ORPOLoss beta=0"),
])
def test_bad_settings_are_refused_in_one_line(make, says):
    with pytest.raises(ConfigError) as e:
        make()
    assert str(e.value).startswith(says) and "\n" not in str(e.value)


# --- sequence_log_probs against a log-softmax over the whole logits ----------------------------------

def _pair_batch(vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows [chosen..., rejected...]: a shared prompt of 4 tokens, answers of different lengths, right padding.

    Returns (input_ids (4, 12), completion_mask (4, 12), labels (4, 12) shifted for tunelib).
    """
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (4, 12), generator=g)
    ids[2:, :4] = ids[:2, :4]  # each pair shares its prompt
    ends = torch.tensor([12, 9, 7, 11])  # answer ends (exclusive); padding after
    position = torch.arange(12)[None]
    completion = ((position >= 4) & (position < ends[:, None])).long()
    ids = torch.where(position < ends[:, None], ids, 0)
    labels = torch.full_like(ids, -100)
    labels[:, :-1] = torch.where(completion[:, 1:] == 1, ids[:, 1:], -100)
    return ids, completion, labels


def _plain_sums(model, ids, labels):
    log_probs = model(ids).float().log_softmax(dim=-1)  # (N, T, V): everything at once
    picked = log_probs.gather(2, labels.clamp(min=0)[..., None]).squeeze(2)
    return torch.where(labels != -100, picked, 0.0).sum(dim=1)


def _sums_and_grads(fn, model):
    model.zero_grad()
    sums = fn()
    (sums * torch.tensor([0.3, -1.0, 2.0, 0.7])).sum().backward()  # unequal weights: rows must not mix
    return sums.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny tunelib models: a plain head (llama3), a soft-capped head (gemma2), LoRA on the output (llama3)."""
    root = tmp_path_factory.mktemp("models")
    made = {family: from_pretrained(make_hf_model_folder(root / family, family)).float()
            for family in ("llama3", "gemma2")}
    lora = apply_peft(from_pretrained(make_hf_model_folder(root / "lora", "llama3")).float(),
                      lora_attn_modules=["q_proj"], apply_lora_to_output=True)
    with torch.no_grad():  # B starts at zero; make the adapter change the logits
        lora.lm_head.lora_B.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    made["lora_output"] = lora
    return made


@pytest.mark.parametrize("which", ["llama3", "gemma2", "lora_output"])
@pytest.mark.parametrize("chunks", [1, 3])
def test_sequence_log_probs_equal_full_log_softmax(models, which, chunks):
    model = models[which]
    ids, _, labels = _pair_batch(model.config.vocab_size)
    want, want_grads = _sums_and_grads(lambda: _plain_sums(model, ids, labels), model)
    counts = None

    def chunked():
        nonlocal counts
        sums, counts = sequence_log_probs(model, model.hidden(ids), labels, chunks=chunks)
        return sums

    got, got_grads = _sums_and_grads(chunked, model)
    torch.testing.assert_close(got, want, **TOL)
    assert counts.tolist() == [8, 5, 3, 7]  # answer tokens 4..end
    assert got_grads.keys() == want_grads.keys() and model.lm_head.weight.grad is not None  # tied or not
    if which == "lora_output":
        assert {"lm_head.lora_A.weight", "lm_head.lora_B.weight"} <= got_grads.keys()
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_every_position_scored_as_without_host_indices_gives_the_same_sums(models):
    # A GPU without `trained_rows` sends every position through; ignored ones must count for nothing.
    model = models["gemma2"]
    ids, _, labels = _pair_batch(model.config.vocab_size)
    with torch.no_grad():
        hidden = model.hidden(ids)
        everything, _ = sequence_log_probs(model, hidden, labels, trained_rows=torch.arange(labels.numel()))
        torch.testing.assert_close(everything, _plain_sums(model, ids, labels), **TOL)


def test_a_batch_with_nothing_trained_still_backpropagates(models):
    model = models["llama3"]
    ids, _, labels = _pair_batch(model.config.vocab_size)
    sums, counts = sequence_log_probs(model, model.hidden(ids), torch.full_like(labels, -100))
    assert sums.tolist() == [0.0] * 4 and counts.tolist() == [0] * 4
    sums.sum().backward()  # an all-masked micro-batch must not break the step


# --- one case end to end: TRL's DPOTrainer on a transformers model vs tunelib on the same weights -------

def test_dpo_on_a_tiny_model_equals_trl_end_to_end(trl_trainers, tmp_path):
    from trl.trainer.utils import add_fused_lm_head

    from support.models import load_hf_model

    folder = make_hf_model_folder(tmp_path / "policy", "llama3")
    reference = from_pretrained(make_hf_model_folder(tmp_path / "reference", "llama3", seed=1)).float()
    ours_model, theirs = from_pretrained(folder).float(), load_hf_model(folder).float()
    add_fused_lm_head(theirs, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    ids, completion, labels = _pair_batch(ours_model.config.vocab_size, seed=4)
    with torch.no_grad():
        ref_sums, _ = sequence_log_probs(reference, reference.hidden(ids), labels)

    policy, counts = sequence_log_probs(ours_model, ours_model.hidden(ids), labels, chunks=2)
    terms = DPOLoss(beta=0.1)(policy[:2], policy[2:], ref_sums[:2], ref_sums[2:],
                              chosen_tokens=counts[:2], rejected_tokens=counts[2:])
    got = terms.losses.sum() / 2
    got.backward()

    inputs = {"input_ids": ids, "attention_mask": (ids != 0).long(), "completion_mask": completion,
              "ref_chosen_logps": ref_sums[:2], "ref_rejected_logps": ref_sums[2:]}
    trainer = _dpo_trainer("sigmoid", 0.1, theirs)
    want = trl_trainers.dpo._compute_loss(trainer, theirs, inputs, False)
    want.backward()
    torch.testing.assert_close(got, want, **TOL)
    check_logged_rewards(terms, {k: v[-1] for k, v in trainer._metrics["eval"].items()})
    theirs_grads = dict(theirs.named_parameters())
    for name, p in ours_model.named_parameters():
        torch.testing.assert_close(p.grad, theirs_grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_sequence_log_probs_keep_no_logits_for_backward(tmp_path):
    # Autograd's saved tensors outside the checkpointed chunks, and the largest tensor any op makes.
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Largest(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            sizes = [t.numel() * t.element_size() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            self.largest = max([self.largest, *sizes])
            return out

    vocab = 8192
    model = from_pretrained(make_hf_model_folder(tmp_path / "m", "llama3", vocab_size=vocab)).float()
    ids = torch.randint(0, vocab, (4, 64), generator=torch.Generator().manual_seed(0))
    labels = ids.roll(-1, dims=1)
    labels[:, -1] = -100
    full_logits = int((labels != -100).sum()) * vocab * 4
    hidden = model.hidden(ids).detach().requires_grad_()
    saved, watch = [], Largest()
    with watch, torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.nbytes) or t, lambda t: t):
        sums, _ = sequence_log_probs(model, hidden, labels, chunks=8)
    with watch:
        sums.sum().backward()
    assert sum(saved) < full_logits / 16 and watch.largest < full_logits / 2, (sum(saved), watch.largest, full_logits)
