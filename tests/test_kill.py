"""SIGKILL of the command line at each stage boundary: the Prefect API server it started dies with it, a re-run
completes with one training job, one model version and one server, and after teardown nothing the project
started is left running or listening. In the system tier (a run per boundary)."""

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

from phi3_pipeline.stages import Stage
from tests.conftest import QUICK_TRAINING, ROOT, run_cli
from tests.test_e2e import processes_using, promptflow_services

pytestmark = pytest.mark.system
# Stage boundaries, by the Prefect task whose completion they follow.
BOUNDARIES = [stage.task_name for stage in (Stage.IDENTITY, Stage.DATASET, Stage.FINE_TUNE, Stage.REGISTER,
                                            Stage.DEPLOY, Stage.GO_LIVE, Stage.CONNECTION, Stage.SMOKE_CHAT)]
API_SERVER_COMMANDS = ("-m phi3_pipeline.cli.api_server", "prefect.server.api.server:create_app")  # ours, and Prefect's own


def without_an_api(env) -> dict:
    """The environment of a command that starts its own Prefect API server."""
    return {key: value for key, value in env.items() if key != "PREFECT_API_URL"}


def api_servers_since(started: float) -> list[psutil.Process]:
    """Prefect API servers (the command line's own) started after `started`."""
    found = []
    for process in psutil.process_iter(["cmdline", "create_time", "status"]):
        command = " ".join(process.info["cmdline"] or [])
        if (any(server in command for server in API_SERVER_COMMANDS) and process.info["create_time"] >= started
                and process.info["status"] != psutil.STATUS_ZOMBIE):
            found.append(process)
    return found


def no_api_server_left(started: float, wait_s: float = 20) -> None:
    """Every Prefect API server started since `started` is gone (a stopped one may take a moment to exit)."""
    deadline = time.monotonic() + wait_s
    while api_servers_since(started) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [(p.pid, p.ppid(), " ".join(p.cmdline())) for p in api_servers_since(started)]
    assert left == [], left


def run_until(stage: str, env: dict) -> str:
    """Start the pipeline with no Prefect server configured, SIGKILL it once `stage` has finished; its output."""
    cli = subprocess.Popen([sys.executable, "-m", "flows.full_pipeline"], cwd=ROOT, text=True, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    deadline = time.monotonic() + 600
    for line in cli.stdout:
        lines.append(line)
        if f"Task run '{stage}-" in line and "Finished in state" in line:
            cli.send_signal(signal.SIGKILL)
            break
        assert time.monotonic() < deadline, "".join(lines)
    cli.wait(30)
    assert cli.returncode == -signal.SIGKILL, "".join(lines)
    return "".join(lines)


def listening_ports(workspace: Path) -> list[int]:
    return [c.laddr.port for p in processes_using(workspace) for c in p.net_connections("inet")
            if c.status == psutil.CONN_LISTEN]


@pytest.mark.parametrize("stage", BOUNDARIES)
def test_a_run_killed_after_a_stage_leaves_nothing_behind_and_a_rerun_completes(stage, prefect_server, tmp_path_factory,
                                                                               session_home):
    workspace = tmp_path_factory.getbasetemp() / "killed-runs-ws"  # one workspace for every boundary
    env = {**os.environ, **QUICK_TRAINING, "PHI3_LOCAL__WORKSPACE_DIR": str(workspace)}
    own_api = without_an_api(env)
    started = time.time()
    run_until(stage, own_api)
    no_api_server_left(started)  # the killed run's Prefect API server died with it

    rerun = run_cli("flows.full_pipeline", env={"PHI3_LOCAL__WORKSPACE_DIR": str(workspace), **QUICK_TRAINING})
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert len(list(workspace.glob("jobs/*"))) == 1, "one training job"
    assert [p.name for p in (workspace / "registry" / "phi3-custom").iterdir() if p.is_dir()] == ["1"]
    endpoint = json.loads(next((workspace / "endpoints").glob("*.json")).read_text())
    assert len(endpoint["traffic"]) == 1 and len(listening_ports(workspace)) == 1, "one server"

    down = run_cli("flows.teardown", env={"PHI3_LOCAL__WORKSPACE_DIR": str(workspace)})
    assert down.returncode == 0, down.stdout + down.stderr
    assert processes_using(workspace) == [] and promptflow_services() == []
    no_api_server_left(started)


def api_servers_of(workspace: Path) -> list[psutil.Process]:
    """Prefect API servers running in the environment of a command for `workspace`."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(server in " ".join(process.info["cmdline"] or []) for server in API_SERVER_COMMANDS):
            try:
                if (process.environ().get("PHI3_LOCAL__WORKSPACE_DIR") == str(workspace)
                        and process.status() != psutil.STATUS_ZOMBIE):
                    found.append(process)
            except psutil.Error:  # gone meanwhile
                pass
    return found


@pytest.mark.parametrize("args", [["--epoch", "3"], ["--dataset.source", "/nowhere.jsonl"]])
def test_a_command_stopped_by_its_flags_or_checks_leaves_no_api_server(args, tmp_path, session_home):
    """A command starts its API server only to run a flow: bad flags or settings leave none behind."""
    env = without_an_api(os.environ)
    workspace = tmp_path / "ws"
    result = subprocess.run([sys.executable, "-m", "flows.full_pipeline", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={**env, "PHI3_LOCAL__WORKSPACE_DIR": str(workspace)})
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: "), result.stderr
    deadline = time.monotonic() + 1  # killed by the kernel with the command: gone at once (an orphan lives on)
    while api_servers_of(workspace) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert api_servers_of(workspace) == []


def test_a_prefect_api_named_by_a_profile_is_used_and_no_server_of_its_own_started(tmp_path, session_home,
                                                                                  prefect_server):
    """A profile that names an API is honoured: the command starts no server of its own."""
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(f'active = "shared"\n[profiles.shared]\nPREFECT_API_URL = "{prefect_server}"\n')
    env = without_an_api(os.environ)
    workspace = tmp_path / "ws"

    def teardown_runs() -> int:
        return requests.post(f"{prefect_server}/flow_runs/count", timeout=10,
                             json={"flows": {"name": {"any_": ["phi3-teardown"]}}}).json()

    before = teardown_runs()
    result = subprocess.run([sys.executable, "-m", "flows.teardown"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={**env, "PREFECT_PROFILES_PATH": str(profiles),
                                              "PHI3_LOCAL__WORKSPACE_DIR": str(workspace)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert teardown_runs() == before + 1, "the run was recorded on the profile's server"
    assert api_servers_of(workspace) == []
