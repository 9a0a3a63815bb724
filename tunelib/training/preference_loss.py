"""Preference losses: DPO, IPO, hinge (RSO), SimPO and ORPO, one loss per chosen/rejected pair.

Each loss takes the summed log-probabilities of the chosen and rejected answers (from
`tunelib.training.log_probs.sequence_log_probs`), and the reference model's when it needs
them, and returns `PreferenceTerms`: a loss and the two implicit rewards for every pair, as
Hugging Face TRL defines them for that loss. Losses are per pair, never batch means, so the
training loop can sum them over micro-batches and divide by the step's pair count: gradient
accumulation and several processes give exactly the loss of one big batch.

Losses that average log-probabilities over tokens (`length_normalized`: IPO, SimPO, ORPO)
divide the sums by the token counts passed with them. Conventions are TRL 1.x's; where TRL
differs from the papers or from torchtune, the class says so. Config names are the class
paths (`loss._component_: tunelib.training.DPOLoss`); torchtune's `torchtune.rlhf.loss.DPOLoss`,
`RSOLoss`, `SimPOLoss` and `IPOLoss` translate to these.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunelib.errors import ConfigError


@dataclass
class PreferenceTerms:
    """Per-pair results of a preference loss, each (B,).

    losses: what the loop sums and divides by the number of pairs.
    chosen_rewards, rejected_rewards: the implicit rewards TRL logs for this loss (detached);
        `rewards/accuracies` is the share of pairs where chosen > rejected.
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def _positive(owner: str, **values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ConfigError(f"{owner} {name}={value}: must be greater than 0")


def _smoothing(owner: str, label_smoothing: float) -> None:
    if not 0 <= label_smoothing < 0.5:
        raise ConfigError(f"{owner} label_smoothing={label_smoothing}: must be in [0, 0.5) (the assumed share of "
                          "pairs whose preference is flipped; 0 is plain DPO)")


def _per_token(owner: str, log_probs: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
    """Mean log-probability per token: the sums divided by the counts (at least 1, as TRL)."""
    if tokens is None:
        raise ValueError(f"{owner} averages log-probabilities over tokens: pass chosen_tokens and rejected_tokens")
    return log_probs / tokens.clamp(min=1).to(log_probs.dtype)


def _references(owner: str, reference_chosen, reference_rejected) -> None:
    if reference_chosen is None or reference_rejected is None:
        raise ValueError(f"{owner} compares with a reference model: pass reference_chosen and reference_rejected")


def _conservative_sigmoid(margin: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """-log sigmoid(beta * margin), with a share `label_smoothing` of the pairs taken as flipped."""
    return (-F.logsigmoid(beta * margin) * (1 - label_smoothing)
            - F.logsigmoid(-beta * margin) * label_smoothing)


class DPOLoss:
    """Direct Preference Optimization (Rafailov et al. 2023), the sigmoid loss.

    loss = -log sigmoid(beta * m), m = (policy_chosen - reference_chosen) - (policy_rejected -
    reference_rejected), on summed log-probabilities. With `label_smoothing` = e > 0 it is the
    conservative DPO of Mitchell's cDPO note, -(1 - e) log sigmoid(beta m) - e log sigmoid(-beta m),
    as torchtune's DPOLoss, TRL 0.x's "sigmoid" and TRL's CPOTrainer compute it (TRL 1.x's
    DPOTrainer dropped label smoothing from "sigmoid"). Rewards: beta * (policy - reference).

    Args:
        beta: the temperature, how far the policy may move from the reference; 0.1 to 0.5 is usual.
        label_smoothing: the assumed share of flipped preferences, in [0, 0.5); 0 is plain DPO.
    """

    needs_reference = True
    length_normalized = False

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0):
        _positive("DPOLoss", beta=beta)
        _smoothing("DPOLoss", label_smoothing)
        self.beta, self.label_smoothing = beta, label_smoothing

    def __call__(self, policy_chosen, policy_rejected, reference_chosen=None, reference_rejected=None, *,
                 chosen_tokens=None, rejected_tokens=None, chosen_nll=None) -> PreferenceTerms:
        """Per-pair DPO losses and rewards from summed log-probabilities, each (B,)."""
        _references("DPOLoss", reference_chosen, reference_rejected)
        chosen, rejected = policy_chosen - reference_chosen, policy_rejected - reference_rejected
        return PreferenceTerms(_conservative_sigmoid(chosen - rejected, self.beta, self.label_smoothing),
                               self.beta * chosen.detach(), self.beta * rejected.detach())


class IPOLoss:
    """Identity Preference Optimization (Azar et al. 2023), as TRL's DPOTrainer loss_type="ipo".

    loss = (m - 1 / (2 tau))^2 with m the DPO margin computed on log-probabilities averaged
    per token: (policy_chosen - reference_chosen) / chosen_tokens - (policy_rejected -
    reference_rejected) / rejected_tokens. TRL averages so that tau means the same at every
    answer length (confirmed with the IPO authors, whose results use this form); torchtune's
    old IPOLoss used sums, so the same tau is a much stronger pull there. Rewards, as TRL logs
    them: tau * (policy - reference) on the sums.

    Args:
        tau: the regularisation (beta in TRL): the margin is pulled toward 1 / (2 tau).
    """

    needs_reference = True
    length_normalized = True

    def __init__(self, tau: float = 0.1):
        _positive("IPOLoss", tau=tau)
        self.tau = tau

    def __call__(self, policy_chosen, policy_rejected, reference_chosen=None, reference_rejected=None, *,
                 chosen_tokens=None, rejected_tokens=None, chosen_nll=None) -> PreferenceTerms:
        """Per-pair IPO losses and rewards from summed log-probabilities and token counts, each (B,)."""
        _references("IPOLoss", reference_chosen, reference_rejected)
        chosen, rejected = policy_chosen - reference_chosen, policy_rejected - reference_rejected
        margin = _per_token("IPOLoss", chosen, chosen_tokens) - _per_token("IPOLoss", rejected, rejected_tokens)
        return PreferenceTerms((margin - 1 / (2 * self.tau)) ** 2,
                               self.tau * chosen.detach(), self.tau * rejected.detach())


class HingeLoss:
    """The hinge loss of SLiC / RSO (Liu et al. 2023): TRL's loss_type="hinge", torchtune's RSOLoss.

    loss = max(0, 1 - gamma * m), m the DPO margin on summed log-probabilities.
    Rewards: gamma * (policy - reference).

    Args:
        gamma: the temperature (beta in TRL): 1 / gamma is the margin beyond which a pair stops counting.
    """

    needs_reference = True
    length_normalized = False

    def __init__(self, gamma: float = 0.1):
        _positive("HingeLoss", gamma=gamma)
        self.gamma = gamma

    def __call__(self, policy_chosen, policy_rejected, reference_chosen=None, reference_rejected=None, *,
                 chosen_tokens=None, rejected_tokens=None, chosen_nll=None) -> PreferenceTerms:
        """Per-pair hinge losses and rewards from summed log-probabilities, each (B,)."""
        _references("HingeLoss", reference_chosen, reference_rejected)
        chosen, rejected = policy_chosen - reference_chosen, policy_rejected - reference_rejected
        return PreferenceTerms(torch.relu(1 - self.gamma * (chosen - rejected)),
                               self.gamma * chosen.detach(), self.gamma * rejected.detach())


class SimPOLoss:
    """SimPO (Meng et al. 2024): no reference model, rewards are per-token average log-probabilities.

    loss = -log sigmoid(beta * (a_chosen - a_rejected) - gamma), a = summed log-probability /
    tokens, with the same conservative label smoothing as DPOLoss; TRL's CPOTrainer with
    loss_type="simpo" (and cpo_alpha=0). Rewards: beta * a.

    Args:
        beta: the reward scale; the paper uses 2.0 to 2.5.
        gamma: the target reward margin, usually in (0, 1.5].
        label_smoothing: the assumed share of flipped preferences, in [0, 0.5).
    """

    needs_reference = False
    length_normalized = True

    def __init__(self, beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0):
        _positive("SimPOLoss", beta=beta)
        if not gamma >= 0:
            raise ConfigError(f"SimPOLoss gamma={gamma}: must be 0 or more (the target reward margin)")
        _smoothing("SimPOLoss", label_smoothing)
        self.beta, self.gamma, self.label_smoothing = beta, gamma, label_smoothing

    def __call__(self, policy_chosen, policy_rejected, reference_chosen=None, reference_rejected=None, *,
                 chosen_tokens=None, rejected_tokens=None, chosen_nll=None) -> PreferenceTerms:
        """Per-pair SimPO losses and rewards from summed log-probabilities and token counts, each (B,)."""
        chosen = _per_token("SimPOLoss", policy_chosen, chosen_tokens)
        rejected = _per_token("SimPOLoss", policy_rejected, rejected_tokens)
        margin = chosen - rejected - self.gamma / self.beta
        return PreferenceTerms(_conservative_sigmoid(margin, self.beta, self.label_smoothing),
                               self.beta * chosen.detach(), self.beta * rejected.detach())


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate on both sides of -ln 2 (Maechler's rule)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


class ORPOLoss:
    """ORPO (Hong et al. 2024): the chosen answers' NLL plus an odds-ratio term, no reference model.

    loss = chosen_nll - beta * log sigmoid(log odds(chosen) - log odds(rejected)), where
    odds(y) = p / (1 - p) with log p the per-token average log-probability, as TRL's
    ORPOTrainer.odds_ratio_loss. `chosen_nll` is each chosen answer's mean negative
    log-likelihood per token, -(summed log-probability) / tokens, computed here from the
    chosen sums when not given. TRL instead takes one NLL averaged over all chosen tokens of
    the batch; the two agree when chosen answers have equal lengths, and the per-pair form
    sums exactly under gradient accumulation. Rewards: beta * average log-probability.

    Args:
        beta: the weight of the odds-ratio term (lambda in the paper).
    """

    needs_reference = False
    length_normalized = True

    def __init__(self, beta: float = 0.1):
        _positive("ORPOLoss", beta=beta)
        self.beta = beta

    def __call__(self, policy_chosen, policy_rejected, reference_chosen=None, reference_rejected=None, *,
                 chosen_tokens=None, rejected_tokens=None, chosen_nll=None) -> PreferenceTerms:
        """Per-pair ORPO losses and rewards from summed log-probabilities and token counts, each (B,)."""
        chosen = _per_token("ORPOLoss", policy_chosen.float(), chosen_tokens)
        rejected = _per_token("ORPOLoss", policy_rejected.float(), rejected_tokens)
        log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
        nll = -chosen if chosen_nll is None else chosen_nll
        return PreferenceTerms(nll - self.beta * F.logsigmoid(log_odds),
                               self.beta * chosen.detach(), self.beta * rejected.detach())
