"""Load, validate, split and write chat data in the ultrachat_200k record format.

The same code loads the hub dataset for the Azure target and a local file for the local one;
only the source string differs.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import BUILTIN_SAMPLE, DatasetSettings
from pipeline.errors import DatasetError
from pipeline.sample_data import write_sample

KNOWN_ROLES = ("system", "user", "assistant")
TRAIN_FILE = "train_data.jsonl"
TEST_FILE = "test_data.jsonl"
LOADERS_BY_SUFFIX = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class SplitFiles:
    """The two JSONL files of a split and the hash of their content."""

    train_file: Path
    test_file: Path
    content_hash: str
    train_rows: int
    test_rows: int


def validate_record(record: object, where: str) -> dict:
    """Return the record's tutorial fields, or raise naming `where` and the offending field."""
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    for field in ("prompt", "prompt_id"):
        if not isinstance(record.get(field), str) or not record[field].strip():
            raise DatasetError(f"{where}: field '{field}' must be a non-empty string")
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f"{where}: field 'messages' must be a non-empty list of {{role, content}}")
    for index, message in enumerate(messages):
        field = f"messages[{index}]"
        if not isinstance(message, dict):
            raise DatasetError(f"{where}: field '{field}' must be an object with role and content")
        if message.get("role") not in KNOWN_ROLES:
            raise DatasetError(
                f"{where}: field '{field}.role' is {message.get('role')!r}; expected one of {', '.join(KNOWN_ROLES)}"
            )
        if not isinstance(message.get("content"), str) or not message["content"].strip():
            raise DatasetError(f"{where}: field '{field}.content' must be non-empty text")
    if not any(message["role"] == "assistant" for message in messages):
        raise DatasetError(f"{where}: field 'messages' has no assistant turn to learn from")
    return {"prompt": record["prompt"], "prompt_id": record["prompt_id"], "messages": messages}


def check_jsonl(path: Path) -> int:
    """Validate every line of a JSON Lines file before `datasets` parses it; return the record count."""
    count = 0
    with path.open(encoding="utf-8") as handle:
        lines = _utf8_lines(handle, path)
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DatasetError(f"{where}: invalid JSON ({error.msg} at column {error.colno})") from None
            validate_record(record, where)
            count += 1
    if count == 0:
        raise DatasetError(f"{path}: no records")
    return count


def _utf8_lines(handle, path: Path):
    """The file's lines; a DatasetError naming the file and line at the first byte that is not UTF-8."""
    line_number = 0
    try:
        for line_number, line in enumerate(handle, start=1):  # noqa: B007 - the number names the bad line
            yield line
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}:{line_number + 1}: not UTF-8 text (byte {error.object[error.start]:#04x}); "
                           "save the file as UTF-8") from None


def source_path(settings: DatasetSettings, scratch_dir: Path) -> Path | None:
    """The local file or folder behind the source, making the built-in sample if that is the source."""
    if settings.source == BUILTIN_SAMPLE:
        return write_sample(scratch_dir / "ultrachat_sample.jsonl", settings.sample_size)
    path = Path(settings.source).expanduser()
    return path if path.exists() else None


def check_json_file(path: Path) -> int:
    """Validate a .jsonl file line by line, or a .json file holding an array (or JSON Lines)."""
    if path.suffix == ".json":
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return check_jsonl(path)  # many .json chat files are JSON Lines
        except UnicodeDecodeError:
            return check_jsonl(path)  # names the first line that is not UTF-8
        if not isinstance(records, list) or not records:
            raise DatasetError(f"{path}: expected a JSON array of records or JSON Lines")
        for index, record in enumerate(records):
            validate_record(record, f"{path}[{index}]")
        return len(records)
    return check_jsonl(path)


def check_source(settings: DatasetSettings, scratch_dir: Path) -> None:
    """Fail fast on a malformed local JSON/JSONL source, naming file, line (or index) and field."""
    path = source_path(settings, scratch_dir)
    if path is not None and path.suffix in (".jsonl", ".json") and path.is_file():
        check_json_file(path)
    elif path is not None and path.is_dir():
        check_folder_split(path, _split_name(settings.split))


def load_split(settings: DatasetSettings, scratch_dir: Path):
    """Load the configured slice with `datasets` (hub name, local file or folder)."""
    import datasets  # heavy import, only when the stage runs

    datasets.disable_progress_bars()
    path = source_path(settings, scratch_dir)
    split_name = _split_name(settings.split)
    try:
        if path is None:
            return datasets.load_dataset(settings.source, split=settings.split)
        if path.is_dir():
            check_folder_split(path, split_name)
            return datasets.load_dataset(str(path), split=settings.split)
        loader = LOADERS_BY_SUFFIX.get(path.suffix)
        if loader is None:
            raise DatasetError(f"{path}: unsupported file type; use .jsonl, .json or .parquet")
        if loader == "json":
            check_json_file(path)
        return datasets.load_dataset(
            loader, data_files={split_name: str(path)}, split=settings.split, cache_dir=str(scratch_dir / "hf")
        )
    except (ValueError, FileNotFoundError) as error:
        raise DatasetError(f"cannot load dataset {settings.source!r} split {settings.split!r}: {error}") from None


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


def split_and_write(settings: DatasetSettings, scratch_dir: Path) -> SplitFiles:
    """Split 80/20 (configurable) with the seed, validate every row, write the tutorial's two files."""
    dataset = load_split(settings, scratch_dir)
    if len(dataset) < 2:
        raise DatasetError(
            f"dataset {settings.source!r} split {settings.split!r} has {len(dataset)} record(s); need 2 or more"
        )
    for index, row in enumerate(dataset):  # before the shuffle, so the index is the source's own
        validate_record(row, f"{settings.source} (split {settings.split}, record {index})")
    parts = dataset.train_test_split(test_size=settings.test_fraction, seed=settings.seed)
    out_dir = scratch_dir / "split"
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    counts = {}
    for part_name, file_name in (("train", TRAIN_FILE), ("test", TEST_FILE)):
        lines = [json.dumps(validate_record(row, settings.source), ensure_ascii=False) for row in parts[part_name]]
        content = "\n".join(lines) + "\n"
        (out_dir / file_name).write_text(content, encoding="utf-8")
        digest.update(file_name.encode() + b"\0" + content.encode())
        counts[part_name] = len(lines)
    return SplitFiles(
        train_file=out_dir / TRAIN_FILE,
        test_file=out_dir / TEST_FILE,
        content_hash=digest.hexdigest(),
        train_rows=counts["train"],
        test_rows=counts["test"],
    )


def source_fingerprint(settings: DatasetSettings) -> dict:
    """What identifies the source's content without reading it: file sizes and times, or the hub name."""
    if settings.source == BUILTIN_SAMPLE:
        return {"builtin": settings.sample_size}
    path = Path(settings.source).expanduser()
    if not path.exists():
        return {"hub": settings.source}
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(f): (f.stat().st_size, f.stat().st_mtime_ns) for f in files}
