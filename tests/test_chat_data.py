"""Dataset stage logic: the built-in sample, the seeded split, validation errors that point at the line."""

import json

import pytest

from pipeline.chat_data import check_jsonl, split_and_write
from pipeline.config import DatasetSettings
from pipeline.errors import DatasetError
from pipeline.sample_data import make_sample


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
    ],
)
def test_bad_record_names_file_line_and_field(tmp_path, bad_line, expected):
    source = write_jsonl(tmp_path / "chats.jsonl", [GOOD, bad_line, GOOD])
    with pytest.raises(DatasetError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        check_jsonl(source)
    with pytest.raises(DatasetError, match="chats.jsonl:2"):
        split_and_write(DatasetSettings(source=str(source)), tmp_path / "w")


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
