"""Value rules that several recipe schemas share: seeds, devices and folder names.

Each returns the problems it finds as phrases for `tune: error: config is not valid: ...`,
so a schema's `value_problems` can list them and `tune validate` refuses what `tune run` would.
"""

from __future__ import annotations

import os
import re

SEED_LIMIT = 2**32  # NumPy's and torch's seeding both accept 0 .. 2**32 - 1
_DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")


def seed_problems(cfg: dict) -> list[str]:
    """`seed` must be null or a whole number from 0 to 2**32 - 1."""
    seed = cfg.get("seed")
    if seed is None or 0 <= seed < SEED_LIMIT:
        return []
    return [f"seed={seed}; use a whole number from 0 to {SEED_LIMIT - 1}, or null for a random one"]


def device_problems(cfg: dict) -> list[str]:
    """`device` must name a device torch knows: auto, cpu, cuda or cuda:N (mps, xpu too)."""
    device = cfg.get("device")
    if device is None or _DEVICE.fullmatch(device):
        return []
    return [f"device={device!r}; use auto, cpu, cuda or cuda:N"]


def checkpointer_folder_problems(cfg: dict, *keys: str) -> list[str]:
    """Each of `keys` given both at the top and inside `checkpointer` (torchtune's files name the
    folders there) must name the same folder."""
    node = cfg.get("checkpointer") if isinstance(cfg.get("checkpointer"), dict) else {}
    return [f"{key}={cfg[key]} but checkpointer.{key}={node[key]}; they must name the same folder: set one of them"
            for key in keys
            if isinstance(node.get(key), str) and isinstance(cfg.get(key), str)
            and os.path.normpath(node[key]) != os.path.normpath(cfg[key])]


def folder_problems(cfg: dict, *keys: str) -> list[str]:
    """Each of `keys` that is present must name a folder: an empty value would mean the current one."""
    return [f"{key} is empty, which means the current folder; give the folder's path" for key in keys
            if isinstance(cfg.get(key), str) and not cfg[key].strip()]
