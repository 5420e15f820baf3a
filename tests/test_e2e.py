"""The whole pipeline on the local target, from the terminal, against a real Prefect server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from phi3_pipeline.chat_flow.promptflow_chat import CHAT_FLOW_DIR, EXPORTER_OFFLINE_ENV
from tests.conftest import ROOT, run_cli


def processes_using(path: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(path) in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def promptflow_services() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"])
            if "promptflow" in " ".join(p.info["cmdline"] or []) and "pfs" in " ".join(p.info["cmdline"] or [])]


def answer_of(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stdout.splitlines() if line.startswith("A: ")]
    assert lines, result.stdout + result.stderr
    return lines[-1][3:].strip()


def files_containing(root: Path, secret: str, skip: set[Path] = frozenset()) -> list[Path]:
    needle = secret.encode()
    return [path for path in root.rglob("*")
            if path.is_file() and path not in skip and needle in path.read_bytes()]


def job_status(workspace: Path) -> tuple[Path, dict] | None:
    for status_file in workspace.glob("jobs/*/status.json"):
        try:
            return status_file.parent, json.loads(status_file.read_text())
        except json.JSONDecodeError:
            return None
    return None


@pytest.fixture
def workspace(tmp_path, prefect_server) -> Path:
    return tmp_path / "ws"


def test_full_pipeline_resumes_reuses_and_tears_down(workspace, session_home, prefect_server):
    env = {**os.environ, "PHI3_LOCAL__WORKSPACE_DIR": str(workspace)}
    outputs = []

    # 1. A run killed during training leaves the job running on its own.
    first = subprocess.Popen([sys.executable, "-m", "flows.full_pipeline"], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        seen = job_status(workspace)
        if seen and seen[1].get("state") == "Running" and seen[1].get("step", 0) > 0:
            break
        time.sleep(0.5)
    else:
        first.kill()
        pytest.fail("training never started: " + first.communicate()[0])
    first.send_signal(signal.SIGKILL)
    outputs.append(first.communicate()[0])
    job_dir, status = seen
    training_pid = status["pid"]
    assert psutil.pid_exists(training_pid), "the job should outlive the killed pipeline"

    # 2. The re-run adopts that job instead of starting a second one, and answers.
    second = run_cli("flows.full_pipeline", env=env)
    outputs.append(second.stdout + second.stderr)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "adopted existing fine-tune job" in second.stdout + second.stderr
    assert json.loads((job_dir / "status.json").read_text())["pid"] == training_pid
    assert len(list(workspace.glob("jobs/*"))) == 1
    assert answer_of(second)
    metrics = json.loads((job_dir / "job_metrics.json").read_text())
    assert metrics["train_loss_last"] < metrics["train_loss_first"]

    # 3. A re-run with nothing changed starts no training and reuses the registered version.
    status_mtime = (job_dir / "status.json").stat().st_mtime_ns
    third = run_cli("flows.full_pipeline", env=env)
    outputs.append(third.stdout + third.stderr)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "model version 1" in third.stdout
    for stage in ("dataset", "fine-tune", "register"):
        assert f"{stage:<20} reused (cached)" in third.stdout, third.stdout
    assert "the candidate is the live deployment already: nothing to compare" in third.stdout
    assert (job_dir / "status.json").stat().st_mtime_ns == status_mtime
    assert len(list(workspace.glob("jobs/*"))) == 1
    assert answer_of(third)

    # 4. Artifacts of the run: summary table, loss curve, answer.
    artifacts = requests.post(f"{prefect_server}/artifacts/filter", json={"limit": 50}, timeout=10).json()
    keys = {artifact["key"] for artifact in artifacts}
    assert {"run-summary", "loss-curve", "smoke-chat-answer", "fine-tune-progress"} <= keys

    # 5. The same chat flow folder works with Prompt flow's own CLI and the connection the run made.
    pf_run = subprocess.run([str(Path(sys.executable).parent / "pf"), "flow", "test", "--flow", str(CHAT_FLOW_DIR),
                             "--inputs", "input_data=Who founded Apple?"],
                            cwd=ROOT, env={**env, **EXPORTER_OFFLINE_ENV}, capture_output=True, text=True,
                            timeout=300)
    assert pf_run.returncode == 0, pf_run.stdout + pf_run.stderr
    assert '"answer"' in pf_run.stdout
    outputs.append(pf_run.stdout + pf_run.stderr)

    key = (workspace / "secrets" / "endpoint.key").read_text().strip()
    assert files_containing(CHAT_FLOW_DIR, key) == []
    assert list(workspace.glob("deployments/*/server.log")), "the live server's log is checked too"
    assert files_containing(workspace, key, skip={workspace / "secrets" / "endpoint.key"}) == []

    # 6. Teardown leaves no listening port and no process of ours behind; twice is fine.
    endpoint = json.loads(next(workspace.glob("endpoints/*.json")).read_text())
    port = int(endpoint["scoring_uri"].split(":")[2].split("/")[0])
    down = run_cli("flows.teardown", env=env)
    outputs.append(down.stdout + down.stderr)
    assert down.returncode == 0 and "removed: server" in down.stdout
    assert not [c for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN"]
    assert processes_using(workspace) == []
    assert promptflow_services() == []
    again = run_cli("flows.teardown", env=env)
    assert again.returncode == 0 and "removed: nothing" in again.stdout

    # 7. The endpoint key is nowhere but its own file: not in logs, results, artifacts or Prompt flow runs.
    assert all(key not in output for output in outputs)
    assert files_containing(workspace, key, skip={workspace / "secrets" / "endpoint.key"}) == []
    assert not list(workspace.glob("scratch/*")), "each run removed its scratch folder (and Prompt flow's run folder)"
    assert files_containing(session_home, key) == []  # Prefect DB (logs, artifacts), result storage, PF home


def test_teardown_flag_and_teardown_after_a_failure(workspace, prefect_server):
    env = {"PHI3_LOCAL__WORKSPACE_DIR": str(workspace), "PHI3_TRAINING__EPOCHS": "3",
           "PHI3_TRAINING__BASE_PRETRAIN_STEPS": "40"}
    failed = run_cli("flows.full_pipeline", "--smoke_chat_timeout_s", "0.01", env=env)
    assert failed.returncode == 1
    assert "live at http://127.0.0.1" in failed.stdout + failed.stderr, "the run got past the deploy stage"
    last_line = failed.stderr.strip().splitlines()[-1]
    assert last_line == "error: the chat flow gave no answer within 0.01 s (smoke_chat_timeout_s)", last_line
    assert processes_using(workspace) == [], "a failure after deploy must not leave the server running"

    done = run_cli("flows.full_pipeline", "--teardown", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert answer_of(done)
    assert processes_using(workspace) == []
    assert list(workspace.glob("deployments/*")) == []
