"""Knowledge-distillation losses: divergences between a teacher's and a student's next-token distributions.

Each loss sums a per-token divergence over the trained positions (label != ignore_index):
the caller divides by the token count, as with cross-entropy, and mixes the two with
`kd_ratio`. Both models' logits are made a chunk of positions at a time, so neither model's
logits for all tokens are ever alive: the student's chunk runs inside `torch.utils.checkpoint`
(its logits are recomputed in backward), the teacher's under `no_grad` inside the same chunk
(recomputed too, one extra teacher output-layer matmul per chunk, rather than keeping them).

The values are true divergences, >= 0 and 0 when the distributions agree. torchtune's
ForwardKLLoss returns the cross-entropy -sum p_teacher log p_student instead, larger by the
teacher's entropy: the same gradient for the student, another number in the logs.
Configs name `kd_loss._component_: tunelib.training.ForwardKLLoss` (or Reverse, Symmetric,
JSD); torchtune's ForwardKLLoss, ForwardKLWithChunkedOutputLoss and the like translate here.
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from tunelib.errors import ConfigError
from tunelib.training.log_probs import IGNORE_INDEX, chunk_positions


class _ChunkedDivergence:
    """Sums `divergence(teacher log-probs, student log-probs)` over trained positions, chunk by chunk.

    Args:
        num_output_chunks: how many pieces the positions are cut into for the output layers.
        ignore_index: the label of positions nothing is learned from.
    """

    def __init__(self, num_output_chunks: int = 8, ignore_index: int = IGNORE_INDEX):
        if not (isinstance(num_output_chunks, int) and num_output_chunks >= 1):
            raise ConfigError(f"{type(self).__name__} num_output_chunks={num_output_chunks}: "
                              "use a whole number, 1 or more")
        self.num_output_chunks = num_output_chunks
        self.ignore_index = ignore_index

    def __call__(self, student_model, student_hidden: torch.Tensor, teacher_model, teacher_hidden: torch.Tensor,
                 labels: torch.Tensor, *, ignore_index: int | None = None,
                 trained_rows: torch.Tensor | None = None) -> torch.Tensor:
        """The divergence summed over trained positions (fp32 scalar); divide by the token count yourself.

        Args:
            student_model, teacher_model: have `logits(hidden)`, as tunelib's CausalLM; the same vocabulary.
            student_hidden: (N, T, H) from `student_model.hidden(...)`; gradients flow back to it
                and to the student's output layer.
            teacher_hidden: (N, T, H') from `teacher_model.hidden(...)`, best made under no_grad.
            labels: (N, T) already shifted; `ignore_index` (default: the constructor's) marks
                positions that count for nothing.
            trained_rows: optional flat (N*T) indices of the trained positions, found on the host.

        Raises:
            ConfigError: the two models' vocabularies differ in size.
        """
        ignore = self.ignore_index if ignore_index is None else ignore_index
        if trained_rows is None and labels.device.type == "cpu":
            trained_rows = (labels.flatten() != ignore).nonzero().squeeze(1)
        student, targets, _ = chunk_positions(student_hidden, labels, ignore, trained_rows)
        teacher, _, _ = chunk_positions(teacher_hidden, labels, ignore, trained_rows)
        total = student.new_zeros((), dtype=torch.float32)
        grad = torch.is_grad_enabled()
        n = self.num_output_chunks  # exactly n pieces (maybe empty): as many output-layer calls on every FSDP2 rank
        for s, t, y in zip(student.tensor_split(n), teacher.tensor_split(n), targets.tensor_split(n)):
            args = (student_model, teacher_model, s, t, y, ignore)
            total = total + (checkpoint(self._chunk, *args, use_reentrant=False) if grad else self._chunk(*args))
        return total

    def _chunk(self, student_model, teacher_model, student_hidden, teacher_hidden, labels, ignore_index):
        student = student_model.logits(student_hidden).float().log_softmax(dim=-1)  # (c, V)
        with torch.no_grad():
            teacher = teacher_model.logits(teacher_hidden).float().log_softmax(dim=-1)  # (c, V)
        if teacher.shape[-1] != student.shape[-1]:
            raise ConfigError(f"teacher vocabulary {teacher.shape[-1]} != student vocabulary {student.shape[-1]}: "
                              "distillation needs models with the same tokenizer")
        per_token = self.divergence(teacher, student)  # (c,)
        return torch.where(labels != ignore_index, per_token, 0.0).sum()

    def divergence(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        """Per-row divergence (c,) from log-probabilities (c, V) of teacher and student."""
        raise NotImplementedError


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, sum_v p (log p - log q); a zero-probability p_v adds 0."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), 0.0).sum(dim=-1)


class ForwardKLLoss(_ChunkedDivergence):
    """KL(p_teacher || p_student) per token, summed: the student covers all the teacher's mass.

    torchtune's ForwardKLLoss reports -sum p_teacher log p_student, this plus the teacher's
    entropy; the student's gradient is the same.
    """

    def divergence(self, teacher, student):
        return _kl(teacher, student)


class ReverseKLLoss(_ChunkedDivergence):
    """KL(p_student || p_teacher) per token, summed: the student seeks the teacher's modes.

    The same value as torchtune's ReverseKLLoss (up to how each treats -inf logits).
    """

    def divergence(self, teacher, student):
        return _kl(student, teacher)


class SymmetricKLLoss(_ChunkedDivergence):
    """sym_kl_ratio * forward KL + (1 - sym_kl_ratio) * reverse KL per token, summed.

    Arguments in torchtune's order; torchtune spells the ratio `sym_kd_ratio` (its configs
    translate). The value is torchtune's SymmetricKLLoss plus sym_kl_ratio times the teacher's
    entropy (see ForwardKLLoss).

    Args:
        sym_kl_ratio: the weight of the forward KL, in [0, 1]; 1 is ForwardKLLoss, 0 ReverseKLLoss.
    """

    def __init__(self, num_output_chunks: int = 8, sym_kl_ratio: float = 0.5, ignore_index: int = IGNORE_INDEX):
        super().__init__(num_output_chunks, ignore_index)
        if not 0 <= sym_kl_ratio <= 1:
            raise ConfigError(f"SymmetricKLLoss sym_kl_ratio={sym_kl_ratio}: must be in [0, 1] "
                              "(1 is forward KL, 0 reverse KL)")
        self.sym_kl_ratio = sym_kl_ratio

    def divergence(self, teacher, student):
        r = self.sym_kl_ratio
        return r * _kl(teacher, student) + (1 - r) * _kl(student, teacher)


class JSDLoss(_ChunkedDivergence):
    """The generalized Jensen-Shannon divergence of GKD (Agarwal et al. 2024) per token, summed.

    With m = beta * p_teacher + (1 - beta) * p_student: beta * KL(p_teacher || m) +
    (1 - beta) * KL(p_student || m), as TRL's GKDTrainer.generalized_jsd_loss; like TRL,
    beta = 0 means forward KL and beta = 1 reverse KL (the limits of JSD / beta and
    JSD / (1 - beta)). beta = 0.5 is the symmetric JSD, at most ln 2 per token.

    Args:
        beta: the teacher's share of the mixture, in [0, 1].
    """

    def __init__(self, num_output_chunks: int = 8, beta: float = 0.5, ignore_index: int = IGNORE_INDEX):
        super().__init__(num_output_chunks, ignore_index)
        if not 0 <= beta <= 1:
            raise ConfigError(f"JSDLoss beta={beta}: must be in [0, 1] (the teacher's share of the mixture)")
        self.beta = beta

    def divergence(self, teacher, student):
        if self.beta == 0:
            return _kl(teacher, student)
        if self.beta == 1:
            return _kl(student, teacher)
        mixture = torch.logaddexp(teacher + math.log(self.beta), student + math.log1p(-self.beta))
        return self.beta * _kl(teacher, mixture) + (1 - self.beta) * _kl(student, mixture)
