"""Knowledge distillation: the student's cross-entropy mixed with a divergence from a frozen teacher.

    loss = (1 - kd_ratio) * cross-entropy + kd_ratio * divergence(teacher || student)

both summed over the trained tokens (the loop averages per token). The student's hidden states
are computed once and feed both terms; the teacher runs without gradients. The divergence
(tunelib.training.ForwardKLLoss, ReverseKLLoss, SymmetricKLLoss, JSDLoss) works over chunks of
tokens, so neither model's logits for the whole batch are alive at once.
"""

from __future__ import annotations

import torch

from tunelib.training.objectives.base import Terms, model_inputs, with_router_loss
from tunelib.training.objectives.next_token import NextToken


class Distillation(NextToken):
    """Cross-entropy plus a divergence from `teacher`, per token; logs `class_loss` and `kd_loss` too.

    Args:
        loss: the cross-entropy component (tunelib.training.LinearCrossEntropyLoss).
        kd_loss: the divergence component: kd_loss(student, student_hidden, teacher,
            teacher_hidden, labels) -> its sum over trained tokens.
        kd_ratio: the divergence's share of the loss, in [0, 1].
        teacher: the frozen teacher model (same vocabulary).
    """

    needs = ("teacher",)

    def __init__(self, loss, kd_loss, kd_ratio: float, teacher: torch.nn.Module):
        super().__init__(loss)  # tokens counted, host inputs and compile as for cross-entropy alone
        self.kd_loss, self.kd_ratio, self.teacher = kd_loss, kd_ratio, teacher

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Terms:
        inputs = model_inputs(batch)
        hidden = model.hidden(batch["input_ids"], **inputs)  # (B, T, H)
        class_loss = self.loss.from_hidden(model, hidden, batch)
        with torch.no_grad():
            teacher_hidden = self.teacher.hidden(batch["input_ids"], **inputs)
        kd = self.kd_loss(model, hidden, self.teacher, teacher_hidden, batch["labels"],
                          trained_rows=batch.get("trained_rows"))
        loss = (1 - self.kd_ratio) * class_loss + self.kd_ratio * kd
        terms = Terms(loss, {"class_loss": class_loss.detach(), "kd_loss": kd.detach()})
        return with_router_loss(model, batch, terms, (batch["labels"] != -100).sum())
