"""docs/reliability.md names the tests that hold each promise: each of them must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _defined_tests() -> dict[str, set[str]]:
    """Test function names and parametrize case ids, by file name."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        text = path.read_text()
        names = set(re.findall(r"^def (test_\w+)", text, flags=re.M))
        names |= set(re.findall(r'Case\("(\w+)"', text))
        found.setdefault(path.name, set()).update(names)
    return found


def test_every_test_the_reliability_doc_names_exists():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    defined = _defined_tests()
    everywhere = set().union(*defined.values())
    named = set(re.findall(r"`(?:[\w/]*/)?(test_\w+\.py)::(test_\w+)`", doc))
    bare = set(re.findall(r"`(test_\w+)`", doc))
    cases = set(re.findall(r"\(case `(\w+)`\)", doc))
    assert len(named) >= 10 and len(bare) >= 10 and cases
    missing = [f"{file}::{name}" for file, name in named if name not in defined.get(file, set())]
    missing += [name for name in bare | cases if name not in everywhere]
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"
