"""What a chat record in the ultrachat_200k format must hold, checked one record at a time (to name the
record and the field) or by one SQL condition over all of them (200,000 records in under a second).

The SQL check only finds the records to look at: each one it flags is checked again by `validate_record`,
whose message is the one a user sees, so both ways accept and refuse exactly the same records.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from phi3_pipeline.config.errors import DatasetError

JSON_BLANKS = b" \t\r"  # with the line break, the whitespace JSON allows: a line of only these holds no record

KNOWN_ROLES = ("system", "user", "assistant")
TEXT_FIELDS = ("prompt", "prompt_id")
# Exactly the characters Python's str.strip() removes (str.isspace), for RE2: a text of only these is empty.
_BLANK = (r"^[\t\n\x{0b}\x{0c}\r\x{1c}-\x{1f} \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}"
          r"\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]*$")


def validate_record(record: object, where: str) -> dict:
    """Return the record's tutorial fields, or raise naming `where` and the offending field."""
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    for field in TEXT_FIELDS:
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


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def checkable(schema: pa.Schema) -> bool:
    """Whether the columns have the types a batch check understands (text fields, a list of text structs);
    other types are checked record by record, which names the first bad one."""
    if not all(name in schema.names and _is_text(schema.field(name).type) for name in TEXT_FIELDS):
        return False
    messages = schema.field("messages").type if "messages" in schema.names else None
    if messages is None or not (pa.types.is_list(messages) or pa.types.is_large_list(messages)):
        return False
    item = messages.value_type
    return pa.types.is_struct(item) and all(
        item.get_field_index(name) >= 0 and _is_text(item.field(name).type) for name in ("role", "content"))


_ROLES = ", ".join(f"'{role}'" for role in KNOWN_ROLES)
# The SQL condition of a record that may break a rule, over columns of the types `checkable` accepts (RE2 is
# DuckDB's regex engine, as it is Arrow's). A record it flags is checked again by `validate_record`.
SUSPECT_SQL = " OR ".join([
    *(f"{field} IS NULL OR regexp_full_match({field}, '{_BLANK}')" for field in TEXT_FIELDS),
    "messages IS NULL OR len(messages) = 0",
    f"coalesce(list_bool_or([m IS NULL OR m.role IS NULL OR m.role NOT IN ({_ROLES}) OR m.content IS NULL "
    f"OR regexp_full_match(m.content, '{_BLANK}') for m in messages]), false)",
    "NOT coalesce(list_bool_or([coalesce(m.role = 'assistant', false) for m in messages]), false)",
])


def check_json_line(line: bytes, where: str) -> dict:
    """One JSON Lines record checked, or a DatasetError naming `where` (file:line) and what is wrong."""
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise DatasetError(f"{where}: not UTF-8 text (byte {error.object[error.start]:#04x}); "
                           "save the file as UTF-8") from None
    except json.JSONDecodeError as error:
        raise DatasetError(f"{where}: invalid JSON ({error.msg} at column {error.colno})") from None
    except RecursionError:
        raise DatasetError(f"{where}: JSON nested too deeply to read") from None
    return validate_record(record, where)


def check_jsonl(path: Path) -> int:
    """Validate every line of a JSON Lines file; return the record count. Slow (one record at a time): it
    runs only to name the line of a file that failed to load or holds a bad record."""
    count = 0
    with path.open("rb") as lines:
        for line_number, line in enumerate(lines, start=1):
            if line.strip(JSON_BLANKS + b"\n"):  # as the fast path (json_lines.py) reads blank lines
                check_json_line(line, f"{path}:{line_number}")
                count += 1
    if count == 0:
        raise DatasetError(f"{path}: no records")
    return count


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
