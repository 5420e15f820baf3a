"""A local JSON Lines source, split without converting it: the file is memory-mapped, its record lines found
with numpy, each record checked by msgspec against the ultrachat format, and its line copied as it is into its
part's file. Nothing is parsed into Python objects but what msgspec checks: 4x the tutorial's loop at 208k
records, memory flat (bench/dataset_scale.py).

msgspec only finds the lines to look at: a chunk it refuses is checked again line by line by
`check_json_line`, whose message (file:line and field) is the one a user sees, so both accept and refuse
exactly the same records.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import numpy as np

from phi3_pipeline.chat_data.records import ANSWER_ROLE, JSON_BLANKS, KNOWN_ROLES, TEXT_FIELDS, check_json_line
from phi3_pipeline.config.errors import DatasetError

# The rule of records.py as msgspec types. Python's re `\S` is a character str.isspace() refuses: a text that has
# one is not blank after strip(); msgspec refuses a lone surrogate as malformed JSON.
_Text = Annotated[str, msgspec.Meta(pattern=r"\S")]


class _Message(msgspec.Struct):
    content: _Text
    role: Literal[KNOWN_ROLES]


_Record = msgspec.defstruct("_Record", [*((field, _Text) for field in TEXT_FIELDS),
                                        ("messages", Annotated[list[_Message], msgspec.Meta(min_length=1)])])


_DECODER = msgspec.json.Decoder(_Record)
CHECK_BYTES = 1 << 20  # records are checked about this much at a time
SCAN_BYTES = 1 << 26  # line breaks are looked for this much at a time (a byte of numpy scratch per byte)
UTF8_BOM = b"\xef\xbb\xbf"


class JsonLines:
    """A JSON Lines file's records, by the byte range of their lines (blank lines are not records, as
    `datasets` reads them): `starts[i]:ends[i]` is record i's line, without its line break."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as file:
            self.data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if path.stat().st_size else b""
        self.starts, self.ends, self.line_numbers = self._record_lines()

    def _record_lines(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        view = np.frombuffer(self.data, dtype=np.uint8)
        size = len(view)
        first = len(UTF8_BOM) if self.data[:len(UTF8_BOM)] == UTF8_BOM else 0  # as Windows editors save it
        breaks, openers = [np.array([], dtype=np.int64)], [view[first:first + 1]]  # each line's first byte
        for at in range(0, size, SCAN_BYTES):
            found = np.flatnonzero(view[at:at + SCAN_BYTES] == ord("\n")) + at
            breaks.append(found)
            openers.append(view[np.minimum(found + 1, size - 1)])  # a line after the last break is empty
            self.release(at, at + SCAN_BYTES)
        breaks = np.concatenate(breaks)
        starts, ends = np.concatenate(([first], breaks + 1)), np.concatenate((breaks, [size]))
        filled = ends > starts
        blank = ~filled
        opens_blank = filled & np.isin(np.concatenate(openers), np.frombuffer(JSON_BLANKS, dtype=np.uint8))
        for line in np.flatnonzero(opens_blank):  # rare: a line that opens with a space may be all spaces
            blank[line] = not self.data[starts[line]:ends[line]].strip(JSON_BLANKS)
        records = np.flatnonzero(~blank)
        return starts[records], ends[records], records + 1

    def release(self, start: int, stop: int) -> None:
        """Drop the pages of bytes `start` to `stop` from this process's memory once read (the system keeps
        them cached): the process holds a few MB of the file, not all of it."""
        if isinstance(self.data, mmap.mmap):
            start -= start % mmap.PAGESIZE
            self.data.madvise(mmap.MADV_DONTNEED, start, min(stop, len(self.data)) - start)

    @property
    def count(self) -> int:
        return len(self.starts)

    def checked(self, first: int, end: int) -> Iterator[tuple[int, int]]:
        """Records `first` to `end`, a few MB at a time, as (first, end) once checked; a DatasetError naming
        the file, line and field at the first bad one."""
        view = memoryview(self.data)
        while first < end:
            stop = min(end, max(first + 1, int(np.searchsorted(self.starts, self.starts[first] + CHECK_BYTES))))
            try:
                records = _DECODER.decode_lines(view[self.starts[first]:self.ends[stop - 1]])
                if len(records) != stop - first or not all(map(_answered, records)):
                    raise msgspec.ValidationError("a line that is not one record, or no assistant turn")
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
                self._name_bad_line(first, stop, error)
            yield first, stop
            first = stop

    def lines_by_label(self, first: int, end: int, labels: np.ndarray) -> dict[int, bytes]:
        """The lines of records `first` to `end`, each with its line break, joined per label (records that sit
        next to each other in the file with the same label are copied in one piece)."""
        starts, ends = self.starts[first:end], self.ends[first:end]
        cuts = np.flatnonzero((labels[1:] != labels[:-1]) | (starts[1:] != ends[:-1] + 1)) + 1
        bounds = np.concatenate(([0], cuts, [end - first]))
        view, pieces = memoryview(self.data), {}
        for label, start, stop in zip(labels[bounds[:-1]].tolist(), starts[bounds[:-1]].tolist(),
                                      ends[bounds[1:] - 1].tolist()):
            piece = view[start:stop + 1] if stop < len(view) else bytes(view[start:stop]) + b"\n"  # the last line
            pieces.setdefault(label, []).append(piece)
        return {label: b"".join(piece_list) for label, piece_list in pieces.items()}

    def _name_bad_line(self, first: int, end: int, error: Exception) -> None:
        """Check the records one by one and raise a DatasetError naming the first bad one."""
        for index in range(first, end):
            line = self.data[self.starts[index]:self.ends[index]]
            where = f"{self.path}:{self.line_numbers[index]}"
            try:
                record = _DECODER.decode(line)
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as line_error:
                check_json_line(line, where)  # raises with the field's name
                raise DatasetError(f"{where}: invalid JSON ({line_error})") from None
            if not _answered(record):
                check_json_line(line, where)
        raise DatasetError(f"{self.path}: lines {self.line_numbers[first]} to {self.line_numbers[end - 1]}: {error}")


def _answered(record: _Record) -> bool:
    return any(message.role == ANSWER_ROLE for message in record.messages)
