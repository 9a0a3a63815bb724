"""The points of a sweep: `--grid KEY=v1,v2` values, their product or a random draw, and short names."""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass

from tunelib.errors import UserError

_OPEN, _CLOSE = "[{(", "]})"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
MAX_NAME = 120  # characters; a folder name stays well under file systems' 255


@dataclass(frozen=True)
class Point:
    """One run of a sweep: its folder name and the overrides (KEY -> value text) that make it."""

    name: str
    overrides: tuple[tuple[str, str], ...]

    def words(self) -> list[str]:
        """The overrides as `tune run` words (`key=value`)."""
        return [f"{key}={value}" for key, value in self.overrides]


def parse_grid(options: list[str]) -> dict[str, list[str]]:
    """`["model.lora_rank=8,16", "optimizer.lr=1e-3,3e-3"]` -> {key: [value texts]}, in the order given.

    Commas inside brackets belong to a value: `model.lora_attn_modules=[q_proj,v_proj],[q_proj,k_proj,v_proj,o_proj]`
    is two values.

    Raises:
        UserError: a --grid without `=`, without values, with an unbalanced bracket, or a key given twice.
    """
    grid: dict[str, list[str]] = {}
    for option in options:
        key, eq, text = option.partition("=")
        key = key.strip().lstrip("-")
        if not eq or not key:
            raise UserError(f"--grid {option}: give KEY=VALUE1,VALUE2 (e.g. --grid model.lora_rank=8,16)")
        if key in grid:
            raise UserError(f"--grid {key} is given twice; list all its values in one --grid {key}=v1,v2")
        values = split_values(text, key)
        if len(set(values)) != len(values):
            raise UserError(f"--grid {key}={text} repeats a value; list each value once")
        grid[key] = values
    return grid


def split_values(text: str, key: str) -> list[str]:
    """Split `text` at the commas outside brackets and quotes.

    Raises:
        UserError: no value, an empty value, or unbalanced brackets.
    """
    values, depth, quote, start = [], 0, None, 0
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth -= 1
        elif char == "," and depth == 0:
            values.append(text[start:i].strip())
            start = i + 1
        if depth < 0:
            break
    values.append(text[start:].strip())
    if depth != 0 or quote:
        raise UserError(f"--grid {key}={text}: unbalanced brackets or quotes")
    if not all(values):
        raise UserError(f"--grid {key}={text}: an empty value; give KEY=VALUE1,VALUE2")
    return values


def plan(grid: dict[str, list[str]], random_points: int | None = None, seed: int = 0) -> list[Point]:
    """Every point of the grid (the last key changing fastest), or `random_points` of them drawn without repetition.

    Raises:
        UserError: the grid is empty, or asks for more random points than it has.
    """
    if not grid:
        raise UserError("a sweep needs at least one --grid KEY=VALUE1,VALUE2")
    combos = [tuple(zip(grid, values)) for values in itertools.product(*grid.values())]
    if random_points is not None:
        if not 1 <= random_points <= len(combos):
            raise UserError(f"--random {random_points}: the grid has {len(combos)} point(s); ask for 1 to {len(combos)}")
        combos = random.Random(seed).sample(combos, random_points)
    labels = _labels(list(grid))
    names: dict[str, int] = {}
    points = []
    for combo in combos:
        name = "_".join(f"{labels[key]}-{value_label(value)}" for key, value in combo)[:MAX_NAME]
        names[name] = names.get(name, 0) + 1
        points.append(Point(name if names[name] == 1 else f"{name}-{names[name]}", combo))
    return points


def _labels(keys: list[str]) -> dict[str, str]:
    """A short label per key: its last part (`optimizer` for `optimizer._component_`), the whole key when two would clash."""
    def short(key: str) -> str:
        parts = key.split(".")
        return parts[-2] if parts[-1] == "_component_" and len(parts) > 1 else parts[-1]

    shorts = [short(key) for key in keys]
    return {key: (s if shorts.count(s) == 1 else key.replace("._component_", "")) for key, s in zip(keys, shorts)}


def value_label(value: str) -> str:
    """A value as a folder-name part: `torch.optim.SGD` -> `SGD`, `[q_proj,v_proj]` -> `q_proj+v_proj`."""
    text = value.strip().strip("'\"")
    if text[:1] in _OPEN:
        text = "+".join(part.strip().strip("'\"").split(".")[-1] for part in text[1:-1].split(",") if part.strip())
        return _UNSAFE.sub("_", text) or "none"
    if re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)+", text):  # a dotted import path
        text = text.rsplit(".", 1)[-1]
    return _UNSAFE.sub("_", text) or "empty"
