"""Device, precision and random state: the few global facts of a run."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import random
import sys
from typing import Mapping

import numpy as np
import torch

from tunelib.errors import ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """Turn the config's `device` into a torch.device (`auto`: this rank's GPU if any, else CPU).

    Raises:
        ConfigError: a name torch does not know, or CUDA asked for but not available.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device is cuda but no CUDA GPU is visible; set device=cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


# torch reads the first, else the second (its newer name), when CUDA starts.
ALLOC_CONF_NAMES = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")


def cuda_allocator_env(environ: Mapping[str, str], device_name: str, cuda_available: bool) -> dict[str, str]:
    """The environment a run adds for CUDA's caching allocator.

    Takes the process's environment, the config's `device` and whether a GPU is visible.
    Returns {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"} for a run on CUDA (cuda,
    cuda:N, or auto with a GPU), else {}; also {} when the user set PYTORCH_CUDA_ALLOC_CONF or
    PYTORCH_ALLOC_CONF (their settings win, whatever they say).

    Expandable segments grow one mapping instead of caching blocks of each size: batches whose
    length changes from step to step then neither fragment the cache nor make it free and
    reallocate (cudaFree waits for the GPU).
    """
    on_cuda = device_name.startswith("cuda") or (device_name == "auto" and cuda_available)
    if not on_cuda or any(name in environ for name in ALLOC_CONF_NAMES):
        return {}
    return {ALLOC_CONF_NAMES[0]: "expandable_segments:True"}


def configure_cuda_allocator(device_name: str) -> None:
    """Set `cuda_allocator_env` in this process's environment; call it before CUDA starts."""
    os.environ.update(cuda_allocator_env(os.environ, device_name, torch.cuda.is_available()))


def set_cpu_threads(threads: int | None) -> None:
    """Use `threads` threads for work on the CPU (None: leave torch's choice, one per core).

    Small models waste most of a second thread on waiting: the demo spends about three times
    the CPU-seconds with two threads on two busy cores as with one.
    """
    if threads is not None:
        torch.set_num_threads(threads)


# glibc's mallopt parameter, and the size from which freed host memory goes back to the system.
_M_MMAP_THRESHOLD = -3
HOST_RETURN_BYTES = 4 * 2**20


def return_freed_host_memory(threshold: int = HOST_RETURN_BYTES) -> bool:
    """Let freed blocks of host memory of `threshold` bytes or more go back to the system.

    glibc serves a large block from its heap once a block that size was freed, and keeps what
    is freed there: a run whose tensors change size (FSDP2's gathers on CPU, CPU offload)
    grows its resident memory far past what it holds (1.1 GiB more for two 350M-parameter
    LoRA processes). Fixing the threshold makes every such block a mapping of its own, given
    back when freed, for a page fault on its first use (about 3% of a CPU step measured).

    Returns:
        True where this is glibc and the setting took, else False (nothing changes).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The torch dtype for the config's `dtype`.

    Raises:
        ConfigError: bf16 on a GPU without bf16 support.
    """
    if name not in DTYPES:
        raise ConfigError(f"dtype must be fp32 or bf16, not {name!r} (fp16 training is not supported)")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU does not support bf16; set dtype=fp32")
    return DTYPES[name]


def set_seed(seed: int | None) -> int:
    """Seed Python, NumPy and torch; pick and return a seed when given None."""
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed


def rng_state() -> dict:
    """Every random state a run draws from, in a form `torch.load(weights_only=True)` reads."""
    state = {
        "python": _python_state(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal.tolist()), None if gauss is None else float(gauss)))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state():
    version, internal, gauss = random.getstate()
    return [version, torch.tensor(internal, dtype=torch.int64), gauss]


def _numpy_state():
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
