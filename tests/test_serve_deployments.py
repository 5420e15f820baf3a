"""`python -m deployments.serve`: the four deployments of prefect.yaml from one process, on a Prefect server of
its own (so the work-pool deployments of test_deployments.py stay as they are)."""

from __future__ import annotations

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
from tests.conftest import ROOT, start_prefect_server
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


def serving_process(api_url: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "deployments.serve"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PREFECT_API_URL": api_url})


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
