"""Bad input of every kind (a value for every numeric setting, config files, the environment, flags, data files,
model folders) fails before any money is spent (settings before the flow starts, data in the dataset stage, before
any fine-tune): exit code 2, one `error:` line naming the culprit, no traceback, and no process or listening socket
left behind."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from phi3_pipeline.cli.commands import run_pipeline_cli

GOOD_RECORD = {"prompt": "Hi", "prompt_id": "1", "messages": [{"role": "user", "content": "Hi"},
                                                                {"role": "assistant", "content": "Hello"}]}
# (id, flags, expected in the error line): numeric settings out of range or of the wrong type, and bad names
FLAG_CASES = [
    ("split bad slice", ["--dataset.split", "train_sft[:abc]"], "dataset.split: not a split in datasets' "
                                                                "syntax (Unrecognized instruction format"),
    ("chat front end unknown", ["--chat_front_end", "devui"], "chat_front_end: Input should be 'promptflow', "
                                                              "'agent_framework' or 'both'"),
    ("test_fraction 0", ["--dataset.test_fraction", "0"], "dataset.test_fraction"),
    ("test_fraction 1", ["--dataset.test_fraction", "1"], "dataset.test_fraction"),
    ("test_fraction text", ["--dataset.test_fraction", "half"], "dataset.test_fraction"),
    ("seed -1", ["--dataset.seed", "-1"], "dataset.seed"),
    ("seed 2^32", ["--dataset.seed", str(2**32)], "dataset.seed"),
    ("seed 1.5", ["--dataset.seed", "1.5"], "dataset.seed"),
    ("sample_size 10", ["--dataset.sample_size", "10"], "dataset.sample_size"),
    ("sample_size huge", ["--dataset.sample_size", "10000000"], "dataset.sample_size"),
    ("learning_rate 0", ["--training.learning_rate", "0"], "training.learning_rate"),
    ("learning_rate 2", ["--training.learning_rate", "2"], "training.learning_rate"),
    ("warmup_ratio 1", ["--training.warmup_ratio", "1"], "training.warmup_ratio"),
    ("warmup_ratio -0.1", ["--training.warmup_ratio", "-0.1"], "training.warmup_ratio"),
    ("epochs 0", ["--training.epochs", "0"], "training.epochs"),
    ("epochs 101", ["--training.epochs", "101"], "training.epochs"),
    ("batch_size 0", ["--training.batch_size", "0"], "training.batch_size"),
    ("batch_size 513", ["--training.batch_size", "513"], "training.batch_size"),
    ("lora_rank 0", ["--training.lora_rank", "0"], "training.lora_rank"),
    ("lora_alpha 0", ["--training.lora_alpha", "0"], "training.lora_alpha"),
    ("max_seq_length 8", ["--training.max_seq_length", "8"], "training.max_seq_length"),
    ("max_seq_length 5000", ["--training.max_seq_length", "5000"], "training.max_seq_length"),
    ("base_pretrain_steps -1", ["--training.base_pretrain_steps", "-1"], "training.base_pretrain_steps"),
    ("scheduler", ["--training.lr_scheduler_type", "sawtooth"], "training.lr_scheduler_type"),
    ("questions 0", ["--evaluation.questions", "0"], "evaluation.questions"),
    ("margin 2", ["--evaluation.margin", "2"], "evaluation.margin"),
    ("eval max_new_tokens 0", ["--evaluation.max_new_tokens", "0"], "evaluation.max_new_tokens"),
    ("port -1", ["--local.port", "-1"], "local.port"),
    ("port 70000", ["--local.port", "70000"], "local.port"),
    ("max_new_tokens_limit 0", ["--local.max_new_tokens_limit", "0"], "local.max_new_tokens_limit"),
    ("max_request_bytes 10", ["--local.max_request_bytes", "10"], "local.max_request_bytes"),
    ("generation_timeout 0", ["--local.generation_timeout_s", "0"], "local.generation_timeout_s"),
    ("generation_timeout 1e9", ["--local.generation_timeout_s", "1e9"], "local.generation_timeout_s"),
    ("concurrent 0", ["--local.max_concurrent_generations", "0"], "local.max_concurrent_generations"),
    ("contract", ["--local.scoring_contract", "grpc"], "local.scoring_contract"),
    ("smoke timeout 0", ["--smoke_chat_timeout_s", "0"], "smoke_chat_timeout_s"),
    ("smoke timeout 1e300", ["--smoke_chat_timeout_s", "1e300"], "smoke_chat_timeout_s"),
    ("smoke timeout inf", ["--smoke_chat_timeout_s", "inf"], "smoke_chat_timeout_s"),
    ("job timeout -5", ["--job_timeout_s", "-5"], "job_timeout_s"),
    ("job timeout 1e12", ["--job_timeout_s", "1e12"], "job_timeout_s"),
    ("compute_max_nodes 0", ["--azure.compute_max_nodes", "0"], "azure.compute_max_nodes"),
    ("deploy_instance_count 0", ["--azure.deploy_instance_count", "0"], "azure.deploy_instance_count"),
    ("request_timeout 10", ["--azure.request_timeout_ms", "10"], "azure.request_timeout_ms"),
    ("azure lr 5", ["--azure.training.learning_rate", "5"], "azure.training.learning_rate"),
    ("hub name too long", ["--azure.hub_name", "h" * 34], "azure.hub_name"),
    ("project name with a dot", ["--azure.project_name", "my.project"], "azure.project_name"),
    ("target", ["--target", "gcp"], "target"),
    ("model_name", ["--model_name", "Bad Name"], "model_name"),
    ("connection_name", ["--connection_name", "bad name!"], "connection_name"),
    ("empty question", ["--question", ""], "question"),
    ("unknown flag", ["--training.epoch", "4"], "--training.epochs"),
    ("unknown section flag", ["--datasett.seed", "1"], "--datasett.seed"),
]


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def config_file(tmp: Path, text: str | bytes) -> list[str]:
    return ["--config", str(write(tmp / "phi3-pipeline.toml", text))]


def data_file(tmp: Path, name: str, content: str | bytes) -> list[str]:
    return ["--dataset.source", str(write(tmp / name, content))]


def model_folder(tmp: Path, config: str | None, tokenizer: bool) -> list[str]:
    folder = tmp / "model"
    folder.mkdir()
    if config is not None:
        write(folder / "config.json", config)
    if tokenizer:
        write(folder / "tokenizer.json", "{}")
    return ["--training.base_model", str(folder)]


def data_folder(tmp: Path) -> list[str]:
    write(tmp / "data" / "train.jsonl", json.dumps(GOOD_RECORD) + "\n")
    return ["--dataset.source", str(tmp / "data"), "--dataset.split", "train_sft"]


def mixed_folder(tmp: Path) -> list[str]:
    write(tmp / "mixed" / "train.jsonl", json.dumps(GOOD_RECORD) + "\n")
    write(tmp / "mixed" / "test.csv", "a,b\n")
    return ["--dataset.source", str(tmp / "mixed")]


# (id, how to make the input in a temporary folder, expected in the error line)
FILE_CASES = [
    ("workspace_dir a file", lambda t: write(t / "ws", "not a folder") and [],  # the test's --local.workspace_dir
     "ws exists and is not a folder"),
    ("toml malformed", lambda t: config_file(t, "[training\nepochs = 4\n"), "phi3-pipeline.toml is not valid TOML"),
    ("toml not utf-8", lambda t: config_file(t, b"question = '\xff'\n"), "is not valid TOML"),
    ("toml unknown key in section", lambda t: config_file(t, "[training]\nepoch = 4\n"),
     "training.epoch: no such setting (did you mean training.epochs?)"),
    ("toml unknown top key", lambda t: config_file(t, "quesiton = 'x'\n"), "did you mean question?"),
    ("toml unknown section", lambda t: config_file(t, "[trainng]\nepochs = 4\n"), "did you mean training?"),
    ("toml bad value", lambda t: config_file(t, "[dataset]\nseed = -3\n"), "dataset.seed"),
    ("config missing", lambda t: ["--config", str(t / "absent.toml")], "config file not found"),
    ("jsonl not utf-8", lambda t: data_file(t, "chat.jsonl", b'{"prompt": "\xff"}\n'), "chat.jsonl:1: not UTF-8"),
    ("jsonl bad json", lambda t: data_file(t, "chat.jsonl", "{not json}\n"), "chat.jsonl:1: invalid JSON"),
    ("jsonl no messages", lambda t: data_file(t, "chat.jsonl", json.dumps({"prompt": "x"}) + "\n"), "chat.jsonl:1"),
    ("jsonl empty", lambda t: data_file(t, "chat.jsonl", ""), "no records"),
    ("json not array", lambda t: data_file(t, "chat.json", json.dumps({"a": 1})), "chat.json"),
    ("data path missing", lambda t: ["--dataset.source", str(t / "nothing.jsonl")], "dataset.source"),
    ("folder without split", data_folder, "has no split 'train_sft' (dataset.split); splits found there: train"),
    ("folder of mixed formats", mixed_folder, "not a folder of data files `datasets` can read"),
    ("model no config", lambda t: model_folder(t, None, True), "training.base_model"),
    ("model bad config", lambda t: model_folder(t, "{oops", True), "config.json is not valid JSON"),
    ("model config not hf", lambda t: model_folder(t, "{}", True), "has no model_type"),
    ("model no tokenizer", lambda t: model_folder(t, '{"model_type": "phi3"}', False), "has no tokenizer"),
]
ENV_CASES = [
    ("env typo in section", {"PHI3_TRAINING__EPOCH": "4"}, "PHI3_TRAINING__EPOCH: training.epoch: no such setting"),
    ("env typo in section name", {"PHI3_TRAINNG__EPOCHS": "4"}, "did you mean training?"),
    ("env unknown top", {"PHI3_QUESTON": "x"}, "PHI3_QUESTON"),
    ("env bad value", {"PHI3_DATASET__SEED": "-1"}, "dataset.seed"),
    ("env not a number", {"PHI3_TRAINING__EPOCHS": "many"}, "training.epochs"),
]


def assert_refused(code: int, err: str, expected: str) -> None:
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], err
    assert "Traceback" not in err


def running() -> tuple[set[int], set]:
    me = psutil.Process()
    return ({child.pid for child in me.children(recursive=True)},
            {c.laddr for c in me.net_connections("inet") if c.status == psutil.CONN_LISTEN})


@pytest.fixture
def nothing_left():
    """No new child process and no new listening socket of this process after the case."""
    before = running()
    yield
    children, listening = running()
    assert children <= before[0] and listening <= before[1]


@pytest.mark.parametrize(("flags", "expected"), [case[1:] for case in FLAG_CASES], ids=[c[0] for c in FLAG_CASES])
def test_a_bad_flag_is_one_error_line(flags, expected, tmp_path, capsys, nothing_left):
    assert_refused(run_pipeline_cli([*flags, "--local.workspace_dir", str(tmp_path / "ws")]),
                   capsys.readouterr().err, expected)


@pytest.mark.parametrize(("make", "expected"), [case[1:] for case in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_a_bad_file_or_folder_is_one_error_line(make, expected, tmp_path, capsys, prefect_api, nothing_left):
    assert_refused(run_pipeline_cli([*make(tmp_path), "--local.workspace_dir", str(tmp_path / "ws")]),
                   capsys.readouterr().err, expected)


@pytest.mark.parametrize(("env", "expected"), [case[1:] for case in ENV_CASES], ids=[c[0] for c in ENV_CASES])
def test_a_bad_environment_variable_is_one_error_line(env, expected, tmp_path, capsys, monkeypatch, nothing_left):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert_refused(run_pipeline_cli(["--local.workspace_dir", str(tmp_path / "ws")]), capsys.readouterr().err,
                   expected)


def test_there_are_at_least_60_cases():
    assert len(FLAG_CASES) + len(FILE_CASES) + len(ENV_CASES) >= 60
