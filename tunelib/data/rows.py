"""Rows of data files on disk, named as an editor shows them: `line 7 of /data/train.jsonl`.

A row that cannot be used raises `RowError`; `RowNames` turns its index into the line of its
JSON Lines, CSV or text file (reading the files only then) and can read the row back as the
file holds it.
"""

from __future__ import annotations

import bisect
import csv
import glob
import json
from array import array
from pathlib import Path

from tunelib.errors import DataError

TEXT_FORMATS = ("json", "csv", "text")  # parsed from bytes by pyarrow, which does not check every string


class RowError(DataError):
    """A row that cannot be used, at index `index` of the raw dataset; `detail` says why.

    Its message names the row `row INDEX of NAME` (from 0); `RowNames` renames it where the
    file has lines.
    """

    def __init__(self, index: int, name: str, detail: str):
        super().__init__(f"row {index} of {name}{detail}")
        self.index, self.detail = index, detail


class RowNames:
    """How messages name a raw row: `line 7 of /data/train.jsonl` for a row of JSON Lines, CSV or
    text files on disk, else `row 6 of NAME` (from 0, as `dataset[6]`).

    `line_per_row` is False when the rows are not the file's lines in order (rows filtered
    out, text read by paragraph). The files are read only when a row is named, that is when
    something is wrong with it.
    """

    def __init__(self, source: str, data_files, name: str, split: str = "train", line_per_row: bool = True):
        self.source, self.name = source, name
        files = local_files(source, data_files, split) if line_per_row else None
        if files and source == "json" and any(starts_with(path, b"[") for path in files):
            files = None  # a JSON array, whose rows do not start lines
        self.files = files
        self._starts: tuple[list[int], array] | None = None  # first row of each file; each row's position

    def __call__(self, index: int) -> str:
        found = self._find(index)
        if found is None:
            return f"row {index} of {self.name}"
        path, position = found
        return f"line {position if self.source == 'csv' else _line_at(path, position)} of {path}"

    def as_in_file(self, index: int) -> dict | None:
        """Row `index` as its JSON Lines file holds it; None for other sources or an unreadable line."""
        found = self._find(index) if self.source == "json" else None
        if found is None:
            return None
        path, offset = found
        with open(path, "rb") as f:
            f.seek(offset)
            try:
                row = json.loads(f.readline())
            except ValueError:
                return None
        return row if isinstance(row, dict) else None

    def _find(self, index: int) -> tuple[Path, int] | None:
        if not self.files:
            return None
        if self._starts is None:
            try:
                self._starts = self._read_starts()
            except (OSError, UnicodeDecodeError, csv.Error):
                self.files = None  # unreadable now: rows keep their index
                return None
        firsts, positions = self._starts
        if not 0 <= index < len(positions):
            return None
        return self.files[bisect.bisect_right(firsts, index) - 1], positions[index]

    def _read_starts(self) -> tuple[list[int], array]:
        firsts, positions = [], array("q")
        for path in self.files:
            firsts.append(len(positions))
            positions.extend(_row_starts(path, self.source))
        return firsts, positions


def local_files(source: str, data_files, split: str = "train") -> list[Path] | None:
    """The files on disk a local source reads, in the order `datasets` reads them; None when
    some are not files here (a Hub dataset, a URL, a pattern that matches nothing)."""
    if source not in TEXT_FORMATS or data_files is None:
        return None
    if isinstance(data_files, dict):
        data_files = data_files.get(split)
    patterns = [data_files] if isinstance(data_files, (str, Path)) else list(data_files or [])
    files = []
    for pattern in map(str, patterns):
        matches = [pattern] if Path(pattern).is_file() else sorted(glob.glob(pattern, recursive=True))
        if not matches:
            return None
        files += [Path(m) for m in matches if Path(m).is_file()]
    return files or None


def starts_with(path: Path, prefix: bytes) -> bool:
    """True when `path`'s first bytes, after white space, are `prefix`."""
    with open(path, "rb") as f:
        return f.read(4096).lstrip().startswith(prefix)


def _row_starts(path: Path, source: str):
    """Where each row of `path` starts, as `datasets` reads the rows: its line (from 1) in a CSV
    file, its byte offset in a JSON Lines or text file."""
    if source == "csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            next(reader, None)  # the header
            start = reader.line_num + 1
            for row in reader:
                if row:  # pyarrow skips empty lines
                    yield start
                start = reader.line_num + 1
        return
    offset = 0
    with open(path, "rb") as f:
        for line in f:
            if source == "text" or line.strip():  # JSON Lines skips blank lines; text keeps them
                yield offset
            offset += len(line)


def _line_at(path: Path, offset: int) -> int:
    """The line (from 1) at byte `offset` of `path`."""
    line, left = 1, offset
    with open(path, "rb") as f:
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            line, left = line + chunk.count(b"\n"), left - len(chunk)
    return line
