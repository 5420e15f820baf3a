"""Load, validate, split and write chat data in the ultrachat_200k record format, once per source.

The same code loads the hub dataset for the Azure target and a local file for the local one; only the
source string differs. Nothing is read into Python objects a record at a time: a local JSON Lines file is
memory-mapped and its checked lines copied as they are (`json_lines.py`); a parquet file is read by DuckDB
as it is, and any other source through `datasets`' memory-mapped Arrow, checked by one SQL pass and written
by DuckDB. Each file is hashed as it is written and named only when complete: at the full ultrachat size
(207,865 conversations) memory stays flat. A split is kept under the target's local folder by its
settings and source, so the stages of a run, and later runs, make it once.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import hashlib
import json
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from phi3_pipeline.chat_data import json_lines
from phi3_pipeline.chat_data.records import RECORD_FIELDS, SUSPECT_SQL, check_json_file, checkable, validate_record
from phi3_pipeline.chat_data.sample import write_sample
from phi3_pipeline.config.errors import DatasetError
from phi3_pipeline.config.naming import content_hash
from phi3_pipeline.config.settings import BUILTIN_SAMPLE, DatasetSettings

TRAIN_FILE = "train_data.jsonl"
TEST_FILE = "test_data.jsonl"
MANIFEST_FILE = "split.json"
LOADERS_BY_SUFFIX = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
CHECK_BATCH_ROWS = 10_000  # records checked at a time in Python when their types need it
SUSPECTS_READ = 100  # the SQL check's first suspects, read back to say what is wrong
UTF8_CHECK_BYTES = 1 << 22  # bytes read at a time to check a file is UTF-8
WRITE_BATCH_ROWS = 2_000  # records DuckDB hands over at a time to be written
TRAIN, TEST = 1, 2
KEEP_OTHER_SPLITS_S = 3600  # another settings' split younger than this may be a waiting run's: it stays


@dataclass(frozen=True)
class SplitFiles:
    """The two JSONL files of a split and the hash of their content."""

    train_file: Path
    test_file: Path
    content_hash: str
    train_rows: int
    test_rows: int


def source_path(settings: DatasetSettings, scratch_dir: Path) -> Path | None:
    """The local file or folder behind the source, making the built-in sample if that is the source."""
    if settings.source == BUILTIN_SAMPLE:
        return write_sample(scratch_dir / "ultrachat_sample.jsonl", settings.sample_size)
    path = Path(settings.source).expanduser()
    return path if path.exists() else None


def hub_revision(settings: DatasetSettings) -> str | None:
    """The commit a hub dataset resolves to: the pinned one, the hub's (online), else the local cache's."""
    from huggingface_hub import HfApi, constants

    if re.fullmatch(r"[0-9a-f]{40}", settings.revision):
        return settings.revision
    ref = settings.revision or "main"
    if not constants.HF_HUB_OFFLINE:
        try:
            return HfApi().dataset_info(settings.source, revision=ref, timeout=10).sha
        except Exception:  # noqa: BLE001 - offline, no network or no access: what the local cache holds
            pass
    cached = Path(constants.HF_HUB_CACHE) / f"datasets--{settings.source.replace('/', '--')}" / "refs" / ref
    return cached.read_text().strip() if cached.is_file() else None


def source_fingerprint(settings: DatasetSettings) -> dict:
    """What identifies the source's content without reading it: file sizes and times, or the hub revision."""
    if settings.source == BUILTIN_SAMPLE:
        return {"builtin": settings.sample_size}
    path = Path(settings.source).expanduser()
    if not path.exists():
        return {"hub": settings.source, "revision": hub_revision(settings)}
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(f): (f.stat().st_size, f.stat().st_mtime_ns) for f in files}


def load_split(settings: DatasetSettings, path: Path | None, work_dir: Path):
    """Load the configured slice with `datasets` (hub name, local file or folder), memory-mapped. A JSON file
    that does not load, or holds a bad record, is read again line by line to name the line."""
    import datasets  # heavy import, only when the stage runs

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # a file it cannot read becomes one error line
    split_name = _split_name(settings.split)
    if _json_source(path) and path.is_file() and not _utf8(path):
        check_json_file(path)  # names the line
    try:
        if path is None:
            return datasets.load_dataset(settings.source, split=settings.split,
                                         revision=hub_revision(settings) or settings.revision or None)
        if path.is_dir():
            check_folder_split(path, split_name)
            return datasets.load_dataset(str(path), split=settings.split, cache_dir=str(work_dir / "hf"))
        loader = LOADERS_BY_SUFFIX.get(path.suffix)
        if loader is None:
            raise DatasetError(f"{path}: unsupported file type; use .jsonl, .json or .parquet")
        return datasets.load_dataset(
            loader, data_files={split_name: str(path)}, split=settings.split, cache_dir=str(work_dir / "hf")
        )
    except DatasetError:
        raise
    except Exception as error:  # noqa: BLE001 - `datasets` and Arrow raise many types for a file they cannot read
        if _json_source(path):
            check_json_file(path)  # names the line and field
        raise DatasetError(f"cannot load dataset {settings.source!r} split {settings.split!r}: {error}") from None


def _json_source(path: Path | None) -> bool:
    """A local JSON or JSON Lines source: one that `check_json_file` can read again to name a bad line."""
    return path is not None and LOADERS_BY_SUFFIX.get(path.suffix) == "json"


def _utf8(path: Path) -> bool:
    """Whether the file is UTF-8 text (Arrow's JSON reader takes other bytes into its strings)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(UTF8_CHECK_BYTES):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _split_name(split: str) -> str:
    """`train_sft[:1%]` -> `train_sft`."""
    return re.split(r"[\[+]", split, maxsplit=1)[0]


def check_folder_split(path: Path, split_name: str) -> None:
    """A folder of data files must hold the split asked for (the error lists the splits `datasets` finds)."""
    import datasets  # heavy import, only for a folder source

    try:
        found = sorted(str(split) for split in datasets.load_dataset_builder(str(path)).config.data_files or {})
    except (ValueError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as error:
        raise DatasetError(f"{path}: not a folder of data files `datasets` can read ({error})") from None
    if split_name not in found:
        raise DatasetError(f"{path} has no split {split_name!r} (dataset.split); splits found there: "
                           f"{', '.join(found) or 'none'}")


@dataclass(frozen=True)
class Records:
    """The split's records, never read into Python memory: a DuckDB query over them in the source's order."""

    count: int
    query: str
    checkable: bool  # columns of the types the SQL check reads (else each record is checked in Python)


def _slice_rows(rows: int, split: str) -> tuple[int, int] | None:
    """The range of a file's `rows` records that the split slice names, or None when it is not one range."""
    if "[" not in split and "+" not in split:
        return 0, rows
    import datasets  # the slice syntax, with its rounding of percentages

    ranges = datasets.ReadInstruction.from_spec(split).to_absolute({_split_name(split): rows})
    return (ranges[0].from_, ranges[0].to) if len(ranges) == 1 else None


def open_records(settings: DatasetSettings, path: Path | None, work_dir: Path, con) -> Records:
    """A local parquet file is read by DuckDB as it is (no conversion); any other source is loaded by
    `datasets` (memory-mapped Arrow) and read from there."""
    if path is not None and path.is_file() and path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
            bounds = _slice_rows(parquet.metadata.num_rows, settings.split)
        except (ValueError, OSError) as error:
            raise DatasetError(f"cannot load dataset {settings.source!r} split {settings.split!r}: {error}") from None
        if bounds is not None:
            first, end = bounds
            literal = str(path).replace("'", "''")
            return Records(count=end - first, checkable=checkable(parquet.schema_arrow),
                           query=f"SELECT * EXCLUDE (file_row_number) FROM read_parquet('{literal}', "
                                 f"file_row_number=true) WHERE file_row_number >= {first} AND file_row_number < {end}")
    dataset = load_split(settings, path, work_dir)
    # a slice of a split is a slice of its table; a dataset with an indices mapping is made plain first
    table = dataset.flatten_indices().data.table if dataset._indices is not None else dataset.data.table
    con.register("loaded", table)
    return Records(count=table.num_rows, query="SELECT * FROM loaded", checkable=checkable(table.schema))


def check_records(con, records: Records, settings: DatasetSettings, path: Path | None) -> None:
    """Every record, named on failure by its index in the source's order (or its file and line): the SQL
    check finds the suspects in one pass, `validate_record` says what is wrong with the first."""
    where = f"{settings.source} (split {settings.split}, record {{}})"
    con.register("positions", pa.table({"position": np.arange(records.count)}))
    numbered = f"SELECT p.position, r.* FROM ({records.query}) r POSITIONAL JOIN positions p"
    if records.checkable:
        if not con.sql(f"SELECT count(*) FROM ({records.query}) WHERE {SUSPECT_SQL}").fetchall()[0][0]:
            return  # the usual case, in one pass that keeps no record
        batches = con.sql(f"SELECT * FROM ({numbered}) WHERE {SUSPECT_SQL} ORDER BY position "
                          f"LIMIT {SUSPECTS_READ}").to_arrow_table().to_batches()
    else:
        batches = con.sql(numbered).to_arrow_reader(CHECK_BATCH_ROWS)
    try:
        for batch in batches:
            for record in batch.to_pylist():
                validate_record(record, where.format(record.pop("position")))
    except DatasetError:
        if _json_source(path):
            check_json_file(path)  # names the file and line instead
        raise


def _parts(count: int, settings: DatasetSettings) -> np.ndarray:
    """Which part each record goes to (TRAIN or TEST): the records `datasets`' train_test_split would hold out
    for this seed and fraction, kept in the source's order in each file."""
    test_rows = math.ceil(settings.test_fraction * count)
    if not 0 < test_rows < count:
        raise DatasetError(f"dataset {settings.source!r} split {settings.split!r} has {count} record(s): too few "
                           f"for a test fraction of {settings.test_fraction:g}")
    parts = np.full(count, TRAIN, dtype=np.int8)
    parts[np.random.default_rng(settings.seed).permutation(count)[:test_rows]] = TEST
    return parts


class _PartFile:
    """One part's file, written under a name no later run takes for a finished file and hashed as it is written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(f".{path.name}.partial")
        self.digest = hashlib.sha256()

    def publish(self) -> None:
        self.partial.replace(self.path)


def _split_hash(files: list[_PartFile]) -> str:
    """The split's identity: each file's name and the hash of its bytes."""
    named = b"".join(file.path.name.encode() + b"\0" + file.digest.digest() for file in files)
    return hashlib.sha256(named).hexdigest()


class _PartsWriter:
    """The parts' files open for appending: a thread makes each chunk's bytes per part, hashes and writes them
    (hashing and writing let go of the GIL) while the caller checks or reads the next. At most two chunks wait,
    so memory stays flat."""

    def __init__(self, files: dict[int, _PartFile]) -> None:
        self.files, self.pending = files, []

    def __enter__(self) -> _PartsWriter:
        self.stack = contextlib.ExitStack()
        self.handles = {part: self.stack.enter_context(file.partial.open("wb")) for part, file in self.files.items()}
        self.thread = self.stack.enter_context(ThreadPoolExecutor(1))
        return self

    def add(self, chunk: Callable[[], dict[int, bytes]], then: Callable[[], None] = lambda: None) -> None:
        """Append what `chunk()` returns (bytes per part), in the order added; call `then` once written."""
        self.pending.append(self.thread.submit(self._append, chunk, then))
        while len(self.pending) > 2:
            self.pending.pop(0).result()

    def _append(self, chunk: Callable[[], dict[int, bytes]], then: Callable[[], None]) -> None:
        for part, data in chunk().items():
            self.files[part].digest.update(data)
            self.handles[part].write(data)
        then()

    def __exit__(self, error_type, *_) -> None:
        try:
            for appended in self.pending:
                if error_type is None:
                    appended.result()
                else:  # the caller's error (a bad record) is the one to report, not a write it cut short
                    appended.exception()
        finally:
            self.stack.close()


def _by_part(batch: pa.RecordBatch) -> dict[int, memoryview]:
    """A batch of (part, JSON line) rows as each part's lines, sliced out of Arrow's buffer without a copy."""
    found = {}
    for part in (TRAIN, TEST):
        lines = pc.filter(batch.column(1), pc.equal(batch.column(0), part)).cast(pa.large_string())
        if len(lines):
            _, offsets, values = lines.buffers()
            bounds = np.frombuffer(offsets, dtype=np.int64)[lines.offset:lines.offset + len(lines) + 1]
            found[part] = memoryview(values)[bounds[0]:bounds[-1]]
    return found


def _write_records(settings: DatasetSettings, path: Path | None, work_dir: Path,
                   files: dict[int, _PartFile]) -> np.ndarray:
    """Check the records with one SQL pass, then read them once more as JSON lines made by DuckDB, in the
    source's order, each into its part's file. Return the parts."""
    import duckdb

    with duckdb.connect(config={"temp_directory": str(work_dir / "duckdb")}) as con:
        con.execute("SET enable_progress_bar = false")  # seconds at full size: no bar in the run's output
        records = open_records(settings, path, work_dir, con)
        check_records(con, records, settings, path)
        parts = _parts(records.count, settings)
        con.register("parts", pa.table({"part": parts}))
        kept = ", ".join(f"'{field}': r.{field}" for field in RECORD_FIELDS)
        lines = con.sql(f"SELECT p.part, to_json({{{kept}}}) || chr(10) FROM ({records.query}) r "
                        "POSITIONAL JOIN parts p")
        with _PartsWriter(files) as writer:
            for batch in lines.to_arrow_reader(WRITE_BATCH_ROWS):
                writer.add(functools.partial(_by_part, batch))
    return parts


def _write_lines(settings: DatasetSettings, lines: json_lines.JsonLines, rows: tuple[int, int],
                 files: dict[int, _PartFile]) -> np.ndarray:
    """Copy each checked line of a JSON Lines file into its part's file, as it is, a chunk at a time. Return
    the parts."""
    first, end = rows
    try:
        parts = _parts(end - first, settings)
    except DatasetError:
        for _ in lines.checked(first, end):  # too few records: a bad one among them is the better message
            pass
        raise
    with _PartsWriter(files) as writer:
        for checked_first, checked_end in lines.checked(first, end):
            writer.add(functools.partial(lines.lines_by_label, checked_first, checked_end,
                                         parts[checked_first - first:checked_end - first]),
                       then=functools.partial(lines.release, lines.starts[checked_first], lines.ends[checked_end - 1]))
    return parts


def split_and_write(settings: DatasetSettings, work_dir: Path) -> SplitFiles:
    """Validate every record, split 80/20 (configurable) with the seed, write the tutorial's two files into
    `work_dir/split`: byte for byte the same for the same source, seed and fraction."""
    out_dir = work_dir / "split"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = source_path(settings, work_dir)
    if path is not None and settings.revision:
        raise DatasetError(f"dataset.revision {settings.revision!r} applies to hub datasets; {path} is a local "
                           "source: leave dataset.revision empty")
    files = {TRAIN: _PartFile(out_dir / TRAIN_FILE), TEST: _PartFile(out_dir / TEST_FILE)}
    lines = json_lines.JsonLines(path) if path is not None and path.is_file() and path.suffix == ".jsonl" else None
    if lines is not None and lines.count == 0:
        raise DatasetError(f"{path}: no records")
    rows = _slice_rows(lines.count, settings.split) if lines is not None else None
    parts = (_write_lines(settings, lines, rows, files) if rows is not None
             else _write_records(settings, path, work_dir, files))
    for file in files.values():
        file.publish()
    return SplitFiles(train_file=files[TRAIN].path, test_file=files[TEST].path,
                      content_hash=_split_hash(list(files.values())),
                      train_rows=int((parts == TRAIN).sum()), test_rows=int((parts == TEST).sum()))


def split_once(settings: DatasetSettings, root: Path) -> SplitFiles:
    """The split of these settings and this source content, made the first time it is asked for and kept
    under `root/splits` (only complete splits are kept there: a failed one leaves nothing a later run could
    take for finished)."""
    splits = root / "splits"
    source = source_fingerprint(settings)
    folder = splits / content_hash({"settings": settings.model_dump(), "source": source})[:16]
    found = _read_split(folder)
    if found is not None:
        os.utime(folder)  # in use: not another run's to remove for an hour
        return found
    work_dir = splits / f".{folder.name}.{os.getpid()}.{threading.get_ident()}"
    # a hub dataset is loaded at the commit its fingerprint names (asked of the hub once, and never newer)
    revision = source.get("revision") if "hub" in source else None
    try:
        made = split_and_write(settings.model_copy(update={"revision": revision}) if revision else settings, work_dir)
        (work_dir / "split" / MANIFEST_FILE).write_text(json.dumps(
            {"content_hash": made.content_hash, "train_rows": made.train_rows, "test_rows": made.test_rows}))
        try:
            (work_dir / "split").rename(folder)
        except OSError:
            if _read_split(folder) is None:
                raise
            # else another run made the same split meanwhile: theirs is as good
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    _remove_other_splits(splits, keep=folder.name)
    return _read_split(folder)


def _read_split(folder: Path) -> SplitFiles | None:
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    return SplitFiles(train_file=folder / TRAIN_FILE, test_file=folder / TEST_FILE, **manifest)


def _remove_other_splits(splits: Path, keep: str) -> None:
    """Splits of other settings or older source content, once they are an hour old (a run waiting for the
    workspace may have just made one), and leftovers of splits that a killed process was making."""
    cutoff = time.time() - KEEP_OTHER_SPLITS_S
    for folder in splits.iterdir():
        with contextlib.suppress(FileNotFoundError):  # another process removed it first
            if folder.name != keep and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
