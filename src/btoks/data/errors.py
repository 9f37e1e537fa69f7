"""One error type and one skip counter for every unusable input (media file, table row, ``encode`` argument).

Media decoding, the dataset readers and :func:`btoks.encode.encode` all raise :class:`InputError`. The error
carries *what* went wrong (``detail``), a short machine-readable ``reason`` that skip counters group by, the
``file`` involved, and *where* it happened (``dataset`` + ``row`` for readers, ``index`` for ``encode``).
Layers add location as the error travels up (:meth:`InputError.at`), so the message a user finally sees names
dataset, row and file once, whichever layer noticed the problem. ``on_error="skip"`` everywhere means: count
the error in a :class:`SkipLog` and go on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from btoks.errors import BToksError

OnError = Literal["raise", "skip"]

# Machine-readable reasons (skip counters group by these).
MISSING = "missing_file"
CORRUPT_IMAGE = "corrupt_image"
TOO_LARGE = "too_large"
UNREADABLE_VIDEO = "unreadable_video"
BROKEN_PDF = "broken_pdf"
PATH_ESCAPE = "path_escape"
EMPTY = "empty"
BAD_ROW = "bad_row"
BAD_INPUT = "bad_input"
NO_QRELS = "no_qrels"
ENCODE_FAILED = "encode_failed"


class InputError(BToksError, ValueError):
    """An input that cannot be used. ``str(err)`` reads ``dataset: row R: file: detail`` (or
    ``input I: ...`` for ``encode``), with the parts that are known."""

    def __init__(self, detail: str, *, reason: str = BAD_INPUT, file: str | Path | None = None,
                 path: str | Path | None = None, dataset: str | None = None, row: int | str | None = None,
                 index: int | None = None) -> None:
        file = file if file is not None else path
        self.file = None if file is None else str(file)
        if self.file and detail.startswith(f"{self.file}: "):  # messages written as "<file>: ..." read once
            detail = detail[len(self.file) + 2:]
        self.detail, self.reason = detail, reason
        self.dataset, self.row, self.index = dataset, row, index
        super().__init__(self._message())

    @property
    def path(self) -> str | None:
        """The file involved (alias kept for media-level callers)."""
        return self.file

    def _message(self) -> str:
        parts = []
        if self.dataset:
            parts.append(self.dataset)
        if self.row is not None:
            parts.append(f"row {self.row}")
        if self.index is not None:
            parts.append(f"input {self.index}")
        if self.file:
            parts.append(self.file)
        return ": ".join([*parts, self.detail])

    def at(self, *, dataset: str | None = None, row: int | str | None = None,
           index: int | None = None, file: str | Path | None = None) -> InputError:
        """A copy with location filled in (fields already set are kept)."""
        return InputError(self.detail, reason=self.reason, file=self.file or file,
                          dataset=self.dataset or dataset, row=self.row if self.row is not None else row,
                          index=self.index if self.index is not None else index)


@dataclass
class SkipLog:
    """Counts of skipped inputs per reason plus the first few messages, so a report can show what was dropped."""

    dataset: str = ""
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 5

    def add(self, err: InputError) -> None:
        self.counts[err.reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(str(err))

    def handle(self, err: InputError, on_error: OnError) -> None:
        """Raise ``err`` (``on_error="raise"``) or count it (``"skip"``)."""
        if on_error == "raise":
            raise err
        if on_error != "skip":
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        self.add(err)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    def __bool__(self) -> bool:
        return self.total > 0


def check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
