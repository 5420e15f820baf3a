"""Dataset stage logic: the built-in sample, the seeded split, validation errors that point at the line."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phi3_pipeline.chat_data.records import check_json_file, check_jsonl
from phi3_pipeline.chat_data.sample import make_sample
from phi3_pipeline.chat_data.split_files import split_and_write
from phi3_pipeline.config.errors import DatasetError
from phi3_pipeline.config.settings import DatasetSettings


def test_builtin_sample_is_deterministic_ultrachat_format():
    first, second = make_sample(240), make_sample(240)
    assert first == second
    assert len({record["prompt"] for record in first}) >= 200
    assert set(first[0]) == {"prompt", "prompt_id", "messages"}
    assert first[0]["messages"][0]["role"] == "user"


def test_split_is_80_20_seeded_and_content_addressed(tmp_path):
    a = split_and_write(DatasetSettings(), tmp_path / "a")
    b = split_and_write(DatasetSettings(), tmp_path / "b")
    c = split_and_write(DatasetSettings(seed=7), tmp_path / "c")
    assert (a.train_rows, a.test_rows) == (192, 48)
    assert a.content_hash == b.content_hash
    assert a.train_file.read_text() == b.train_file.read_text()
    assert c.content_hash != a.content_hash
    train_prompts = {json.loads(line)["prompt_id"] for line in a.train_file.read_text().splitlines()}
    test_prompts = {json.loads(line)["prompt_id"] for line in a.test_file.read_text().splitlines()}
    assert not train_prompts & test_prompts


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_local_jsonl_with_a_split_slice(tmp_path):
    source = write_jsonl(tmp_path / "chats.jsonl", make_sample(200))
    split = split_and_write(DatasetSettings(source=str(source), split="train_sft[:50%]"), tmp_path / "w")
    assert split.train_rows + split.test_rows == 100


def test_local_parquet_source(tmp_path):
    import pandas as pd

    source = tmp_path / "chats.parquet"
    pd.DataFrame(make_sample(200)).to_parquet(source)
    split = split_and_write(DatasetSettings(source=str(source)), tmp_path / "w")
    assert split.train_rows == 160


GOOD = make_sample(1)[0]


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ("{not json", "chats.jsonl:2: invalid JSON"),
        (json.dumps({**GOOD, "messages": []}), "chats.jsonl:2: field 'messages'"),
        (json.dumps({**GOOD, "messages": [{"role": "bot", "content": "hi"}]}), "field 'messages[0].role' is 'bot'"),
        (json.dumps({**GOOD, "messages": [{"role": "user", "content": " "}]}), "field 'messages[0].content'"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "prompt_id"}), "field 'prompt_id'"),
        (json.dumps({**GOOD, "prompt": "\ud800"}), "field 'prompt' is not valid Unicode"),
    ],
)
def test_bad_record_names_file_line_and_field(tmp_path, bad_line, expected):
    source = write_jsonl(tmp_path / "chats.jsonl", [GOOD, bad_line, GOOD])
    with pytest.raises(DatasetError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        check_jsonl(source)
    with pytest.raises(DatasetError, match="chats.jsonl:2"):
        split_and_write(DatasetSettings(source=str(source)), tmp_path / "w")


@pytest.mark.parametrize("name", ["chats.jsonl", "chats.json"])
def test_a_number_too_long_to_read_is_named_by_its_line(tmp_path, name):
    """Python refuses to read an integer of more than 4,300 digits (a ValueError, not a JSONDecodeError)."""
    source = tmp_path / name
    source.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "extra": 0})[:-2] + "1" * 5000 + "}\n")
    with pytest.raises(DatasetError, match=f"{name}:2: invalid JSON"):
        check_json_file(source)


def test_json_array_source_and_its_errors_name_the_index(tmp_path):
    source = tmp_path / "chats.json"
    source.write_text(json.dumps(make_sample(200)))
    assert split_and_write(DatasetSettings(source=str(source)), tmp_path / "w").train_rows == 160
    source.write_text(json.dumps([GOOD, {**GOOD, "messages": [{"role": "bot", "content": "x"}]}]))
    with pytest.raises(DatasetError, match=r"chats.json\[1\]: field 'messages\[0\].role'"):
        split_and_write(DatasetSettings(source=str(source)), tmp_path / "w2")


def test_parquet_errors_name_the_record_of_the_source_not_of_the_shuffle(tmp_path):
    import pandas as pd

    records = make_sample(200)
    records[123] = {**records[123], "messages": [{"role": "user", "content": ""}]}
    source = tmp_path / "chats.parquet"
    pd.DataFrame(records).to_parquet(source)
    with pytest.raises(DatasetError, match=r"record 123\): field 'messages\[0\].content'"):
        split_and_write(DatasetSettings(source=str(source)), tmp_path / "w")


# ---- the batch checks (SQL, msgspec) agree with the record check ------------------------------------
TEXTS = st.one_of(st.none(), st.sampled_from(["", " ", "\x1c", "\u3000\t", "\x85", "\u200b", "x", " hi "]),
                  st.text(max_size=4))
ROLES = st.one_of(st.none(), st.sampled_from(["user", "assistant", "system", "bot", "", "Assistant"]))
MESSAGES = st.one_of(st.none(), st.lists(st.one_of(st.none(), st.fixed_dictionaries({"role": ROLES, "content": TEXTS})),
                                         max_size=4))
GOOD_TURNS = st.lists(st.sampled_from(["system", "user", "assistant"]).map(lambda role: {"role": role, "content": "x"}),
                      max_size=3)  # none may answer


@st.composite
def near_rule(draw) -> dict:
    """A record good but for at most one field or turn's field drawn from the odd values above: good and bad
    records come up alike (nearly every record of odd values only is bad)."""
    record = {"prompt": "x", "prompt_id": "x", "messages": draw(GOOD_TURNS)}
    change = draw(st.sampled_from([None, "prompt", "prompt_id", "messages", "role", "content"]))
    if change in ("role", "content"):
        turn = {"role": "user", "content": "x", change: draw(ROLES if change == "role" else TEXTS)}
        record["messages"].insert(draw(st.integers(0, len(record["messages"]))), turn)
    elif change:
        record[change] = draw(MESSAGES if change == "messages" else TEXTS)
    return record


@settings(max_examples=300, deadline=None)
@given(st.lists(near_rule(), min_size=1, max_size=8))
def test_the_sql_and_msgspec_checks_refuse_exactly_the_records_the_record_check_refuses(records):
    import duckdb
    import msgspec
    import pyarrow as pa

    from phi3_pipeline.chat_data.json_lines import _DECODER, _answered
    from phi3_pipeline.chat_data.records import SUSPECT_SQL, checkable, validate_record

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    batch = pa.Table.from_pylist([{**record, "position": index} for index, record in enumerate(records)],
                                 schema=pa.schema([("prompt", pa.string()), ("prompt_id", pa.string()),
                                                   ("messages", pa.list_(message)), ("position", pa.int64())]))
    assert checkable(batch.schema)
    # DuckDB's default connection reads the local table by its name (a connection per example takes seconds)
    flagged = {row[0] for row in duckdb.sql(f"SELECT position FROM batch WHERE {SUSPECT_SQL}").fetchall()}
    for index, record in enumerate(batch.drop_columns(["position"]).to_pylist()):
        try:
            validate_record(record, "x")
            refused = False
        except DatasetError:
            refused = True
        try:
            answered = _answered(_DECODER.decode(json.dumps(record)))
        except msgspec.ValidationError:
            answered = False
        assert (index in flagged, not answered) == (refused, refused), record


def test_the_sql_check_takes_for_blank_exactly_what_str_strip_removes():
    import sys

    import duckdb
    import pyarrow as pa

    from phi3_pipeline.chat_data.records import ANSWER_ROLE, SUSPECT_SQL

    chars = [chr(code) for code in range(sys.maxunicode + 1) if not 0xD800 <= code <= 0xDFFF]  # no surrogate in Arrow
    with duckdb.connect() as con:
        con.register("chars", pa.table({"prompt": chars}))
        flagged = con.sql(f"SELECT prompt FROM (SELECT prompt, 'x' AS prompt_id, [{{'role': '{ANSWER_ROLE}', "
                          f"'content': 'x'}}] AS messages FROM chars) WHERE {SUSPECT_SQL}").fetchall()
    assert sorted(row[0] for row in flagged) == [char for char in chars if char.isspace()]


def write_parquet(path, rows: int, bad_at: int | None = None):
    """`rows` small ultrachat-shaped records, the one at `bad_at` with an empty answer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    messages = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "" if i == bad_at else "a"}]
                for i in range(rows)]
    pq.write_table(pa.table({"prompt": [f"q{i}" for i in range(rows)], "prompt_id": [str(i) for i in range(rows)],
                             "messages": messages}), path)
    return path


def test_a_bad_record_deep_in_a_large_source_is_named_and_leaves_no_split_behind(tmp_path):
    from phi3_pipeline.chat_data.split_files import split_once

    source = write_parquet(tmp_path / "big.parquet", 160_000, bad_at=150_000)
    with pytest.raises(DatasetError, match=r"record 150000\): field 'messages\[1\].content'"):
        split_once(DatasetSettings(source=str(source)), tmp_path / "root")
    assert list((tmp_path / "root" / "splits").iterdir()) == [], "nothing a later run could take for a split"


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_a_split_that_fails_while_writing_leaves_nothing_and_the_next_one_completes(tmp_path, monkeypatch, suffix):
    from phi3_pipeline.chat_data import split_files

    source = write_parquet(tmp_path / "chats.parquet", 5_000)
    if suffix == ".jsonl":
        import pyarrow.parquet as pq

        source = write_jsonl(tmp_path / "chats.jsonl", pq.read_table(source).to_pylist())
    settings = DatasetSettings(source=str(source))
    real_append = split_files._PartsWriter._append

    def disk_full_at_the_test_file(writer, chunk, then):
        def filling():
            parts = chunk()
            if split_files.TEST in parts:
                raise OSError("disk full")
            return parts
        return real_append(writer, filling, then)

    monkeypatch.setattr(split_files._PartsWriter, "_append", disk_full_at_the_test_file)
    with pytest.raises(OSError, match="disk full"):
        split_files.split_once(settings, tmp_path / "root")
    assert list((tmp_path / "root" / "splits").iterdir()) == []
    monkeypatch.undo()
    split = split_files.split_once(settings, tmp_path / "root")
    assert (split.train_rows, split.test_rows) == (4_000, 1_000)
    assert len(split.train_file.read_text().splitlines()) == 4_000


def test_a_split_is_made_once_for_the_same_source_and_again_when_the_source_changes(tmp_path, monkeypatch):
    from phi3_pipeline.chat_data import split_files

    made = []
    real = split_files.split_and_write
    monkeypatch.setattr(split_files, "split_and_write", lambda *args: made.append(args) or real(*args))
    source = write_parquet(tmp_path / "chats.parquet", 300)
    settings = DatasetSettings(source=str(source))
    first = split_files.split_once(settings, tmp_path / "root")
    again = split_files.split_once(settings, tmp_path / "root")
    assert len(made) == 1 and again == first
    write_parquet(source, 310)
    changed = split_files.split_once(settings, tmp_path / "root")
    assert len(made) == 2 and changed.content_hash != first.content_hash and changed.train_rows == 248
    reseeded = split_files.split_once(DatasetSettings(source=str(source), seed=1), tmp_path / "root")
    assert len(made) == 3 and reseeded.content_hash != changed.content_hash


def test_the_split_is_byte_for_byte_the_same_for_the_same_source_seed_and_fraction(tmp_path):
    source = write_parquet(tmp_path / "chats.parquet", 3_000)
    settings = DatasetSettings(source=str(source), test_fraction=0.3)
    a, b = split_and_write(settings, tmp_path / "a"), split_and_write(settings, tmp_path / "b")
    assert a.train_file.read_bytes() == b.train_file.read_bytes()
    assert a.test_file.read_bytes() == b.test_file.read_bytes()
    import hashlib

    named = b"".join(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest()
                     for path in (a.train_file, a.test_file))
    assert a.content_hash == hashlib.sha256(named).hexdigest(), "the hash made while writing is the files' hash"
    assert json.loads(a.test_file.read_text().splitlines()[0])["messages"][1]["role"] == "assistant"


# ---- hub datasets: the resolved revision is part of the identity ----------------------------------
def test_a_hub_dataset_whose_cached_revision_changes_gets_a_new_identity(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from phi3_pipeline.chat_data.split_files import source_fingerprint
    from tasks.dataset import dataset_cache_key

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    refs = tmp_path / "hub" / "datasets--HuggingFaceH4--ultrachat_200k" / "refs"
    refs.mkdir(parents=True)
    hub = DatasetSettings(source="HuggingFaceH4/ultrachat_200k", split="train_sft[:1%]")
    assert source_fingerprint(hub)["revision"] is None, "nothing cached, offline: unknown"
    (refs / "main").write_text("a" * 40)
    first = source_fingerprint(hub)
    (refs / "main").write_text("b" * 40)  # the cache was refreshed from a newer upstream commit
    assert (first["revision"], source_fingerprint(hub)["revision"]) == ("a" * 40, "b" * 40)
    (refs / "v1.0").write_text("c" * 40)
    assert source_fingerprint(DatasetSettings(source=hub.source, revision="v1.0"))["revision"] == "c" * 40
    pinned = DatasetSettings(source=hub.source, revision="d" * 40)
    assert source_fingerprint(pinned)["revision"] == "d" * 40, "a pinned commit is its own identity"

    from phi3_pipeline.config.settings import PipelineSettings

    settings = PipelineSettings(dataset=hub, local={"workspace_dir": tmp_path / "ws"})
    keys = []
    for commit in ("a" * 40, "b" * 40):
        (refs / "main").write_text(commit)
        keys.append(dataset_cache_key(None, {"settings": settings}))
    assert keys[0] != keys[1], "a new upstream revision is not served from the dataset stage's cache"


def test_a_revision_with_a_local_source_is_refused(tmp_path):
    source = write_parquet(tmp_path / "chats.parquet", 10)
    with pytest.raises(DatasetError, match="dataset.revision 'main' applies to hub datasets"):
        split_and_write(DatasetSettings(source=str(source), revision="main"), tmp_path / "w")


# ---- a local JSON Lines source: checked by msgspec, each line copied as it is ----------------------
# Good records with at most one field drawn from the odd values above: most lines are good, so the first bad
# one is as often a near miss (a blank text, a missing answer) as a plainly broken record.
NEAR_MISSES = st.one_of(st.just({}), *(st.fixed_dictionaries({field: TEXTS}) for field in ("prompt", "prompt_id")),
                        st.fixed_dictionaries({"messages": MESSAGES}),
                        st.just({"messages": [{"role": "user", "content": "no answer"}]}),
                        st.just({"messages": [{"role": "assistant", "content": "\u3000"}]})
                        ).map(lambda change: {**GOOD, **change})


@settings(max_examples=300, deadline=None)
@given(st.lists(NEAR_MISSES, min_size=2, max_size=6), st.sampled_from(["\n", "\r\n"]))
def test_a_json_lines_source_refuses_exactly_the_records_the_record_check_refuses(tmp_path_factory, records,
                                                                                   line_break):
    from phi3_pipeline.chat_data.records import validate_record

    source = tmp_path_factory.mktemp("jsonl") / "chats.jsonl"
    source.write_text("".join(json.dumps(record) + line_break for record in records), newline="")
    refused = []
    for line_number, record in enumerate(records, start=1):
        try:
            validate_record(record, f"{source}:{line_number}")
        except DatasetError as error:
            refused.append(str(error))
    try:
        split = split_and_write(DatasetSettings(source=str(source), test_fraction=0.5), source.parent / "w")
    except DatasetError as error:
        assert refused and str(error) == refused[0], "the first bad line, named as the record check names it"
    else:
        assert not refused
        copied = split.train_file.read_bytes() + split.test_file.read_bytes()
        assert sorted(copied.split(b"\n")[:-1]) == sorted(json.dumps(r).encode() + line_break[:-1].encode()
                                                         for r in records), "each line as it is in the source"


def test_json_lines_blank_lines_a_missing_last_break_and_bad_bytes(tmp_path):
    source = tmp_path / "chats.jsonl"
    lines = [json.dumps(record) for record in make_sample(10)]
    source.write_text("\n\n".join(lines[:5]) + "\n  \t\n" + "\n".join(lines[5:]))  # no break after the last
    split = split_and_write(DatasetSettings(source=str(source)), tmp_path / "w")
    assert (split.train_rows, split.test_rows) == (8, 2)
    assert split.train_file.read_text().count("\n") == 8 and "\n\n" not in split.train_file.read_text()
    source.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode())  # a byte-order mark, as Windows editors save
    split = split_and_write(DatasetSettings(source=str(source)), tmp_path / "bom")
    assert split.train_rows == 8 and not (split.train_file.read_bytes() + split.test_file.read_bytes()).count(b"\xef")
    source.write_bytes(b"\n".join(line.encode() for line in lines[:3]) + b"\n" + b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(DatasetError, match=r"chats.jsonl:4: not UTF-8 text \(byte 0xe9\)"):
        split_and_write(DatasetSettings(source=str(source)), tmp_path / "w2")
    source.write_text(lines[0] + "\n" + json.dumps({**GOOD, "x": []})[:-1].replace("[]", "[" * 100_000 + "]" * 100_000)
                      + "}\n")
    with pytest.raises(DatasetError, match=r"chats.jsonl:2: JSON nested too deeply"):
        split_and_write(DatasetSettings(source=str(source)), tmp_path / "deep")
    source.write_text(lines[0] + "\n" + lines[1] + " " + lines[2] + "\n")  # two records on one line
    with pytest.raises(DatasetError, match=r"chats.jsonl:2: invalid JSON \(Extra data"):
        split_and_write(DatasetSettings(source=str(source)), tmp_path / "w3")
    source.write_text("")
    with pytest.raises(DatasetError, match="chats.jsonl: no records"):
        split_and_write(DatasetSettings(source=str(source)), tmp_path / "w4")
    source.write_text(lines[0] + "\n\x0b\n" + "\n".join(lines[1:]) + "\n")  # not JSON's whitespace: not blank
    for check in (lambda: split_and_write(DatasetSettings(source=str(source)), tmp_path / "w5"),
                  lambda: check_json_file(source)):  # the fast path and the line-by-line check alike
        with pytest.raises(DatasetError, match=r"chats.jsonl:2: invalid JSON \(Expecting value"):
            check()


def test_a_bad_line_deep_in_a_large_json_lines_source_is_named(tmp_path):
    good = json.dumps(GOOD)
    bad = json.dumps({**GOOD, "messages": [{"role": "user", "content": "q"}]})
    source = tmp_path / "big.jsonl"
    source.write_text("".join((bad if index == 150_000 else good) + "\n" for index in range(160_000)))
    with pytest.raises(DatasetError, match=r"big.jsonl:150001: field 'messages' has no assistant turn"):
        split_and_write(DatasetSettings(source=str(source)), tmp_path / "w")
    sliced = split_and_write(DatasetSettings(source=str(source), split="train[:10%]"), tmp_path / "w2")
    assert sliced.train_rows + sliced.test_rows == 16_000, "a slice checks and copies only its records"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=40), st.text(max_size=40).map(str.encode),
                          st.just(json.dumps(GOOD).encode())), min_size=1, max_size=6))
def test_any_bytes_in_a_json_lines_source_end_in_a_split_or_one_named_error(tmp_path_factory, lines):
    source = tmp_path_factory.mktemp("bytes") / "chats.jsonl"
    source.write_bytes(b"\n".join(lines))
    try:
        split_and_write(DatasetSettings(source=str(source)), source.parent / "w")
    except DatasetError as error:
        assert str(error).startswith(str(source)) or "record(s)" in str(error), str(error)
