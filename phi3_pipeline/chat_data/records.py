"""The rule of a chat record in the ultrachat_200k format, defined once here: the other checks of it (the SQL
condition below, json_lines.py's msgspec structs, serving/score.py's check of a request's messages) are built
from these names and functions, so they cannot drift apart.

A record is checked one at a time (to name the record and the field) or by one SQL condition over all of them
(200,000 records in under a second). The SQL check only finds the records to look at: each one it flags is
checked again by `validate_record`, whose message is the one a user sees, so both ways accept and refuse
exactly the same records.
"""

from __future__ import annotations

import json
import reprlib
from pathlib import Path

import pyarrow as pa

from phi3_pipeline.config.errors import DatasetError

JSON_BLANKS = b" \t\r"  # with the line break, the whitespace JSON allows: a line of only these holds no record

KNOWN_ROLES = ("system", "user", "assistant")
ANSWER_ROLE = "assistant"  # a record needs a turn of this role: it is what training learns from
TEXT_FIELDS = ("prompt", "prompt_id")
RECORD_FIELDS = (*TEXT_FIELDS, "messages")  # what a split keeps of a record, in this order
# What str.strip() removes (str.isspace; a test checks each character), for RE2: a text of only these is empty.
_BLANK = (r"^[\t\n\x{0b}\x{0c}\r\x{1c}-\x{1f} \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}"
          r"\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]*$")


def text_fault(value: object) -> str | None:
    """Why `value` is not a text of the rule, or None: a blank one says nothing, and a lone surrogate cannot be
    written as UTF-8 (for the tokenizer, or a JSON file)."""
    if not isinstance(value, str) or not value.strip():
        return "must be non-empty text"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (a lone surrogate)"
    return None


def messages_fault(messages: object, field: str) -> str | None:
    """What is wrong with a list of {role, content} messages, naming `field`, or None: the rule a record's
    messages and a scoring request's share."""
    if not isinstance(messages, list) or not messages:
        return f"field '{field}' must be a non-empty list of {{role, content}}"
    for index, message in enumerate(messages):
        item = f"{field}[{index}]"
        if not isinstance(message, dict):
            return f"field '{item}' must be an object with role and content"
        role = message.get("role")
        if role not in KNOWN_ROLES:  # reprlib: a huge or deeply nested value is shown cut short
            return f"field '{item}.role' is {reprlib.repr(role)}; expected one of {', '.join(KNOWN_ROLES)}"
        if fault := text_fault(message.get("content")):
            return f"field '{item}.content' {fault}"
    return None


def validate_record(record: object, where: str) -> None:
    """Raise a DatasetError naming `where` and the offending field when the record breaks the rule."""
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    for field in TEXT_FIELDS:
        if fault := text_fault(record.get(field)):
            raise DatasetError(f"{where}: field '{field}' {fault}")
    if fault := messages_fault(record.get("messages"), "messages"):
        raise DatasetError(f"{where}: {fault}")
    if not any(message["role"] == ANSWER_ROLE for message in record["messages"]):
        raise DatasetError(f"{where}: field 'messages' has no {ANSWER_ROLE} turn to learn from")


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


def _blank_sql(column: str) -> str:
    """The SQL form of a text that breaks the rule (Arrow strings are UTF-8: no lone surrogate gets there)."""
    return f"{column} IS NULL OR regexp_full_match({column}, '{_BLANK}')"


_ROLES = ", ".join(f"'{role}'" for role in KNOWN_ROLES)
# The SQL condition of a record that may break a rule, over columns of the types `checkable` accepts (RE2 is
# DuckDB's regex engine, as it is Arrow's). A record it flags is checked again by `validate_record`.
SUSPECT_SQL = " OR ".join([
    *(_blank_sql(field) for field in TEXT_FIELDS),
    "messages IS NULL OR len(messages) = 0",
    f"coalesce(list_bool_or([m IS NULL OR m.role IS NULL OR m.role NOT IN ({_ROLES}) OR {_blank_sql('m.content')} "
    "for m in messages]), false)",
    f"NOT coalesce(list_bool_or([coalesce(m.role = '{ANSWER_ROLE}', false) for m in messages]), false)",
])


def check_json_line(line: bytes, where: str) -> None:
    """One JSON Lines record checked: a DatasetError naming `where` (file:line) and what is wrong."""
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise DatasetError(f"{where}: not UTF-8 text (byte {error.object[error.start]:#04x}); "
                           "save the file as UTF-8") from None
    except json.JSONDecodeError as error:
        raise DatasetError(f"{where}: invalid JSON ({error.msg} at column {error.colno})") from None
    except RecursionError:
        raise DatasetError(f"{where}: JSON nested too deeply to read") from None
    except ValueError as error:  # e.g. an integer past Python's 4,300-digit limit for reading one
        raise DatasetError(f"{where}: invalid JSON ({error})") from None
    validate_record(record, where)


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
        except ValueError:  # JSON Lines (many .json chat files are), not UTF-8, or a number too long to read:
            return check_jsonl(path)  # each named by its line
        if not isinstance(records, list) or not records:
            raise DatasetError(f"{path}: expected a JSON array of records or JSON Lines")
        for index, record in enumerate(records):
            validate_record(record, f"{path}[{index}]")
        return len(records)
    return check_jsonl(path)
