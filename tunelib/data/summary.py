"""The one line a dataset reports after it is built: rows kept, skipped, truncated, tokens."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("tunelib.data")


@dataclass(frozen=True)
class DataSummary:
    """What building a dataset did to its rows."""

    name: str
    rows: int           # rows read
    kept: int           # rows in the dataset
    skipped: int        # rows with nothing to train on (dropped) ...
    cut_away: int       # ... of which truncation to max_seq_len removed every trained token
    truncated: int      # rows cut to max_seq_len (kept)
    tokens: int         # tokens in kept rows
    trained: int        # of which are trained (their labels count in the loss)
    max_seq_len: int | None = None

    def __str__(self) -> str:
        cut = f" to {self.max_seq_len} tokens" if self.max_seq_len else ""
        why = "nothing to train on"
        if self.cut_away:
            why += f"; {self.cut_away:,} of them only after truncation{cut}"
        return (f"dataset {self.name}: {self.kept:,} rows kept, {self.skipped:,} skipped "
                f"({why}), {self.truncated:,} truncated{cut}; "
                f"{self.tokens:,} tokens, {self.trained:,} trained")

    def __add__(self, other: DataSummary) -> DataSummary:
        return DataSummary(
            name=f"{self.name} + {other.name}", rows=self.rows + other.rows,
            kept=self.kept + other.kept, skipped=self.skipped + other.skipped,
            cut_away=self.cut_away + other.cut_away,
            truncated=self.truncated + other.truncated, tokens=self.tokens + other.tokens,
            trained=self.trained + other.trained,
            max_seq_len=self.max_seq_len if self.max_seq_len == other.max_seq_len else None,
        )

    def log(self) -> None:
        """Log the line; as a warning when rows were dropped or cut, so nobody misses it."""
        level = logging.WARNING if self.skipped or self.truncated else logging.INFO
        log.log(level, "%s", self)
