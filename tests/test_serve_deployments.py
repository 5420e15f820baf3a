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


@pytest.fixture(scope="module")
def own_prefect_server(tmp_path_factory, session_home):
    home = tmp_path_factory.mktemp("serve-prefect")
    server, api_url = start_prefect_server(home / "server.log", env={"PREFECT_HOME": str(home)})
    try:
        yield api_url
    finally:
        server.terminate()
        server.wait(30)


def test_served_deployments_run_the_pipeline_and_the_teardown_and_ctrl_c_leaves_nothing(own_prefect_server,
                                                                                         tmp_path):
    serving = subprocess.Popen(
        [sys.executable, "-m", "deployments.serve"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # the runs' workspace is set where they run (the UI's form sends the default one, which must not win)
        env={**os.environ, "PREFECT_API_URL": own_prefect_server, "PHI3_LOCAL__WORKSPACE_DIR": str(tmp_path / "ws")})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = requests.post(f"{own_prefect_server}/deployments/filter", json={}, timeout=10).json()
            if sorted(d["name"] for d in found) == sorted(NAMES):
                break
            time.sleep(1)
        else:
            pytest.fail("deployments.serve did not register the four deployments")
        run_the_pipeline_then_the_teardown(own_prefect_server, tmp_path / "ws", as_the_ui_form_sends=True)
        children = psutil.Process(serving.pid).children(recursive=True)
    finally:
        serving.send_signal(signal.SIGINT)  # Ctrl-C
        serving.wait(60)
    assert serving.returncode is not None
    assert not [child for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]
