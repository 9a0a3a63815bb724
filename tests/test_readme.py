"""The README's quick start: exactly two commands, the second is what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```\n(.*?)```", section, flags=re.S)]


def test_quick_start_has_two_commands_and_ci_runs_the_second():
    demo, tests = quick_start_commands()
    assert "tune run lora_finetune_single_device --config demo/tiny_lora" in demo
    ci = [line for line in (REPO / ".ci/run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == [tests]


def test_demo_config_is_shipped():
    from tunelib import registry

    assert "demo/tiny_lora" in registry.configs_of(registry.find_recipe("lora_finetune_single_device"))
