"""Bad input from the terminal ends in one clear line and a non-zero exit, never a traceback."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.system  # each test runs the command line in a subprocess


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def assert_the_run_ends_in_one_error(result, *fragments):
    """A stage of the flow refused the input: the flow's log, then one `error:` line naming it, no traceback."""
    assert result.returncode != 0 and "Traceback" not in result.stderr + result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(fragment in last for fragment in fragments), result.stderr


@pytest.fixture
def workspace_env(tmp_path, session_home):
    return {"PHI3_LOCAL__WORKSPACE_DIR": str(tmp_path / "ws")}


def test_help_lists_the_options():
    result = run_cli("flows.full_pipeline", "--help")
    assert result.returncode == 0
    for option in ("--target", "--dataset.source", "--training.learning_rate", "--training.lr_scheduler_type",
                   "--training.epochs", "--training.batch_size", "--training.lora_rank", "--teardown"):
        assert option in result.stdout


def test_bad_config_value(workspace_env):
    result = run_cli("flows.full_pipeline", "--training.learning_rate", "-0.1", env=workspace_env)
    assert result.returncode == 2
    assert_one_line_error(result, "training.learning_rate")


def test_malformed_jsonl(tmp_path, workspace_env):
    source = tmp_path / "chats.jsonl"
    source.write_text('{"prompt": "hi", "prompt_id": "1", "messages": [{"role": "user", "content": "hi"}, '
                      '{"role": "assistant", "content": "hello"}]}\n{"prompt": "x", "prompt_id": "2", "messages": '
                      '[{"role": "wizard", "content": "x"}]}\n')
    result = run_cli("flows.full_pipeline", "--dataset.source", str(source), env=workspace_env)
    assert_the_run_ends_in_one_error(result, f"{source}:2", "messages[0].role")  # the dataset stage found it
    assert result.returncode == 2  # bad input
    assert "fine-tune-" not in result.stderr  # nothing was submitted


def test_missing_checkpoint_path(workspace_env):
    result = run_cli("flows.full_pipeline", "--training.base_model", "/models/not-here", env=workspace_env)
    assert result.returncode == 2
    assert_one_line_error(result, "training.base_model", "/models/not-here")


def test_port_in_use(workspace_env):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = run_cli("flows.full_pipeline", "--local.port", str(port), env=workspace_env)
    assert_the_run_ends_in_one_error(result, f"port {port}", "local.port=0")  # the quota check, first of all
    assert "identity-and-rbac" not in result.stderr


def test_azure_target_without_its_workspace_is_refused_before_any_work(workspace_env):
    env = {**workspace_env, "PHI3_AZURE": json.dumps({"subscription_id": "s", "resource_group": "g"})}
    result = run_cli("flows.full_pipeline", "--target", "azure", env=env)
    assert_one_line_error(result, "target=azure needs azure.workspace_name, azure.location")


def test_prefect_logs_an_expected_error_without_its_traceback_and_a_bug_with_it():
    script = (
        "import logging\n"
        "from prefect import flow  # noqa: F401 - sets Prefect's logging up, as the CLI's flow import does\n"
        "from phi3_pipeline.cli.commands import quiet_expected_tracebacks\n"
        "from phi3_pipeline.config.errors import PipelineError\n"
        "quiet_expected_tracebacks()\n"
        "log = logging.getLogger('prefect.flow_engine')\n"
        "for error in (PipelineError('the model is retired'), KeyError('a bug')):\n"
        "    try:\n"
        "        raise error\n"
        "    except Exception:\n"
        "        log.error('Task run failed with exception: %r', error, exc_info=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PREFECT_LOGGING_TO_API_ENABLED": "false"})
    output = done.stdout + done.stderr
    assert "the model is retired" in output and "a bug" in output
    assert output.count("Traceback") == 1 and "Traceback" in output.split("the model is retired")[1]
