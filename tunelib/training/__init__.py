"""The training loop and its pieces: loss, schedules, loggers, memory, distribution.

Names here are what configs refer to, e.g. `tunelib.training.get_cosine_schedule_with_warmup`.
"""

from tunelib.training.checkpointer import HFCheckpointer
from tunelib.training.distillation_loss import ForwardKLLoss, JSDLoss, ReverseKLLoss, SymmetricKLLoss
from tunelib.training.loggers import DiskLogger, JSONLLogger, StdoutLogger, TensorBoardLogger, WandBLogger
from tunelib.training.loop import Run, TrainState, train
from tunelib.training.log_probs import sequence_log_probs
from tunelib.training.loss import LinearCrossEntropyLoss
from tunelib.training.preference_loss import DPOLoss, HingeLoss, IPOLoss, ORPOLoss, PreferenceTerms, SimPOLoss
from tunelib.training.profiler import setup_torch_profiler
from tunelib.training.schedules import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

__all__ = [
    "DPOLoss",
    "DiskLogger",
    "ForwardKLLoss",
    "HFCheckpointer",
    "HingeLoss",
    "IPOLoss",
    "JSDLoss",
    "JSONLLogger",
    "LinearCrossEntropyLoss",
    "ORPOLoss",
    "PreferenceTerms",
    "ReverseKLLoss",
    "Run",
    "SimPOLoss",
    "StdoutLogger",
    "SymmetricKLLoss",
    "TensorBoardLogger",
    "TrainState",
    "WandBLogger",
    "get_constant_schedule_with_warmup",
    "get_cosine_schedule_with_warmup",
    "get_linear_schedule_with_warmup",
    "sequence_log_probs",
    "setup_torch_profiler",
    "train",
]
