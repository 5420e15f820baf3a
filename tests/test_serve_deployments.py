"""`python -m deployments.serve`: the four deployments of prefect.yaml from one process, on a Prefect server of
its own (so the work-pool deployments of test_deployments.py stay as they are)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import requests
import yaml

from deployments.serve import PREFECT_YAML, runner_deployments
from tests.conftest import QUICK_TRAINING, ROOT, start_prefect_server
from tests.test_deployments import run_the_pipeline_then_the_teardown

pytestmark = pytest.mark.system  # a Prefect server, the deployments served by a process of their own, Ctrl-C

NAMES = ["full-pipeline", "scheduled-retraining", "teardown", "reaper"]


def test_serve_declares_exactly_what_prefect_yaml_declares():
    declared = {spec["name"]: spec for spec in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]}
    served = {deployment.name: deployment for deployment in runner_deployments()}
    assert sorted(served) == sorted(declared) == sorted(NAMES)
    for name, spec in declared.items():
        deployment = served[name]
        assert deployment.entrypoint == spec["entrypoint"]
        assert (deployment.description, deployment.tags) == (spec["description"], spec["tags"])
        assert deployment.parameters == spec.get("parameters", {})
        assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in deployment.schedules] == [
            (s["cron"], s["timezone"], s["active"]) for s in spec.get("schedules", [])]


def prefect_server_of_its_own(tmp_path_factory) -> tuple[subprocess.Popen, str]:
    home = tmp_path_factory.mktemp("serve-prefect")
    return start_prefect_server(home / "server.log", env={"PREFECT_HOME": str(home)})


@pytest.fixture(scope="module")
def own_prefect_server(tmp_path_factory, session_home):
    server, api_url = prefect_server_of_its_own(tmp_path_factory)
    try:
        yield api_url
    finally:
        server.terminate()
        server.wait(30)


def wait_until_served(api_url: str) -> list[dict]:
    """The four deployments, once the serving process has registered them (unpaused)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = requests.post(f"{api_url}/deployments/filter", json={}, timeout=10).json()
        if sorted(d["name"] for d in found if not d["paused"]) == sorted(NAMES):
            return found
        time.sleep(1)
    pytest.fail("deployments.serve did not register the four deployments")


def serving_process(api_url: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "deployments.serve"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PREFECT_API_URL": api_url, **env})


def stopped_within(process: subprocess.Popen, how: int, seconds: float) -> float:
    started = time.monotonic()
    process.send_signal(how)
    try:
        process.wait(seconds)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return time.monotonic() - started


def test_serve_stops_within_10_s_on_sigterm_pausing_the_schedules_and_so_when_its_server_is_gone(
        tmp_path_factory, session_home):
    server, api_url = prefect_server_of_its_own(tmp_path_factory)
    try:
        serving = serving_process(api_url)
        wait_until_served(api_url)
        assert stopped_within(serving, signal.SIGTERM, 10) < 10
        paused = {d["name"]: d["paused"] for d in requests.post(f"{api_url}/deployments/filter", json={},
                                                                  timeout=10).json()}
        assert paused == dict.fromkeys(NAMES, True), "no schedule runs on for a process that is gone"
        serving = serving_process(api_url)  # served again (it unpauses them), then its server goes first
        wait_until_served(api_url)
    finally:
        server.terminate()
        server.wait(30)
    assert stopped_within(serving, signal.SIGINT, 10) < 10  # Ctrl-C
    shown = serving.stderr.read()
    warnings = [line for line in shown.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "could not be paused within 5 s" in warnings[0], shown


def test_served_deployments_run_the_pipeline_and_the_teardown_and_ctrl_c_leaves_nothing(own_prefect_server,
                                                                                         tmp_path):
    serving = subprocess.Popen(
        [sys.executable, "-m", "deployments.serve"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # the runs' workspace is set where they run (the UI's form sends the default one, which must not win)
        env={**os.environ, "PREFECT_API_URL": own_prefect_server, "PHI3_LOCAL__WORKSPACE_DIR": str(tmp_path / "ws")})
    try:
        wait_until_served(own_prefect_server)
        run_the_pipeline_then_the_teardown(own_prefect_server, tmp_path / "ws", as_the_ui_form_sends=True)
        children = psutil.Process(serving.pid).children(recursive=True)
    finally:
        serving.send_signal(signal.SIGINT)  # Ctrl-C
        serving.wait(60)
    assert serving.returncode is not None
    assert not [child for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]


def start_run(api_url: str, deployment_id: str, epochs: int) -> str:
    """A run of the deployment, its training `epochs` (a new count: a new job)."""
    pretrain, samples = (int(QUICK_TRAINING[f"PHI3_{name}"]) for name in ("TRAINING__BASE_PRETRAIN_STEPS",
                                                                          "DATASET__SAMPLE_SIZE"))
    settings = {"training": {"epochs": epochs, "base_pretrain_steps": pretrain}, "dataset": {"sample_size": samples}}
    for attempt in range(5):  # a 2-core CI machine's busy server may answer 5xx for a moment (SQLite locked)
        answer = requests.post(f"{api_url}/deployments/{deployment_id}/create_flow_run", timeout=30,
                               json={"parameters": {"settings": settings}})
        if answer.ok:
            return answer.json()["id"]
        time.sleep(2 ** attempt)
    pytest.fail(f"the deployment made no flow run: {answer.status_code} {answer.text[:500]}")


def state_of(api_url: str, flow_run_id: str) -> str:
    return requests.get(f"{api_url}/flow_runs/{flow_run_id}", timeout=10).json()["state"]["type"]


def wait_for(check, what: str, timeout: float = 300, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(every)
    pytest.fail(f"{what}: not within {timeout} s")


def running_task(api_url: str, flow_run_id: str, task_name: str) -> bool:
    runs = requests.post(f"{api_url}/task_runs/filter", timeout=10, json={
        "flow_runs": {"id": {"any_": [flow_run_id]}}}).json()
    # a task run the engine has just created has no state yet
    return any(run["name"].startswith(f"{task_name}-") and (run["state"] or {}).get("type") == "RUNNING"
               for run in runs)


def test_cancelled_run_during_fine_tune_and_during_deploy_stops_frees_the_workspace_and_the_old_model_serves(
        tmp_path_factory, session_home, tmp_path):
    """Cancelled from the API, as the UI's Cancel does, a run stops its stages, takes the failure path (its
    candidate server goes, the model that served before keeps serving) and frees the run lock: the next run
    starts at once."""
    from phi3_pipeline.stages import Stage
    from tests.test_kill import listening_ports

    workspace = tmp_path / "ws"
    server, api_url = prefect_server_of_its_own(tmp_path_factory)
    serving = serving_process(api_url, PHI3_LOCAL__WORKSPACE_DIR=str(workspace), PREFECT_RUNNER_POLL_FREQUENCY="1")
    try:
        full = next(d for d in wait_until_served(api_url) if d["name"] == "full-pipeline")
        first = start_run(api_url, full["id"], epochs=3)
        assert wait_for(lambda: state_of(api_url, first) in ("COMPLETED", "FAILED", "CRASHED") and
                        state_of(api_url, first), "the first run") == "COMPLETED"
        endpoint_file = next((workspace / "endpoints").glob("*.json"))
        serving_before = json.loads(endpoint_file.read_text())
        for epochs, stage in ((4, Stage.FINE_TUNE), (5, Stage.DEPLOY)):  # a new job each time: it retrains
            run = start_run(api_url, full["id"], epochs)
            wait_for(lambda: running_task(api_url, run, stage.task_name), f"{stage} running")
            requests.post(f"{api_url}/flow_runs/{run}/set_state", timeout=10,
                          json={"state": {"type": "CANCELLING"}, "force": True})
            assert wait_for(lambda: state_of(api_url, run) in ("CANCELLED", "COMPLETED", "FAILED", "CRASHED") and
                            state_of(api_url, run), f"the run cancelled in {stage}", timeout=120) == "CANCELLED"
            assert json.loads(endpoint_file.read_text())["traffic"] == serving_before["traffic"], stage
            assert requests.get(serving_before["scoring_uri"].removesuffix("score"), timeout=5).ok, \
                f"the model that served before still serves after a cancel in {stage}"
            assert wait_for(lambda: len(listening_ports(workspace)) == 1, "the candidate server gone", 60)
    finally:
        stopped_within(serving, signal.SIGTERM, 30)
        subprocess.run([sys.executable, "-m", "flows.teardown"], cwd=ROOT, capture_output=True, timeout=300,
                       env={**os.environ, "PREFECT_API_URL": api_url, "PHI3_LOCAL__WORKSPACE_DIR": str(workspace)})
        server.terminate()
        server.wait(30)
