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
from tests.test_e2e import processes_using

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


def run_deployment(api_url: str, name: str, parameters: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefect", "deployment", "run", name, "--params",
                           json.dumps(parameters), "--watch", "--watch-timeout", str(int(timeout))],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout + 60,
                          env={**os.environ, "PREFECT_API_URL": api_url})


def test_served_deployments_run_the_pipeline_and_the_teardown_and_ctrl_c_leaves_nothing(own_prefect_server,
                                                                                         tmp_path):
    workspace = tmp_path / "ws"
    serving = subprocess.Popen(
        [sys.executable, "-m", "deployments.serve"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # a scheduled run (the hourly reaper) that comes due meanwhile works in a test folder
        env={**os.environ, "PREFECT_API_URL": own_prefect_server, "PHI3_LOCAL__WORKSPACE_DIR": str(tmp_path / "other")})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = requests.post(f"{own_prefect_server}/deployments/filter", json={}, timeout=10).json()
            if sorted(d["name"] for d in found) == sorted(NAMES):
                break
            time.sleep(1)
        else:
            pytest.fail("deployments.serve did not register the four deployments")
        settings = {"local": {"workspace_dir": str(workspace)}, "question": "Who founded Apple?",
                    "training": {"epochs": int(QUICK_TRAINING["PHI3_TRAINING__EPOCHS"]),
                                 "base_pretrain_steps": int(QUICK_TRAINING["PHI3_TRAINING__BASE_PRETRAIN_STEPS"])},
                    "dataset": {"sample_size": int(QUICK_TRAINING["PHI3_DATASET__SAMPLE_SIZE"])}}
        run = run_deployment(own_prefect_server, "phi3-full-pipeline/full-pipeline", {"settings": settings}, 600)
        assert run.returncode == 0, run.stdout + run.stderr
        answers = requests.post(f"{own_prefect_server}/artifacts/filter", timeout=10, json={
            "artifacts": {"key": {"any_": ["smoke-chat-answer"]}}, "sort": "CREATED_DESC", "limit": 1}).json()
        assert "**Q:** Who founded Apple?" in answers[0]["data"] and "**A:** " in answers[0]["data"]
        stop = run_deployment(own_prefect_server, "phi3-teardown/teardown",
                              {"settings": {"local": {"workspace_dir": str(workspace)}}}, 300)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert processes_using(workspace) == [], "the teardown deployment stopped the scoring server"
        children = psutil.Process(serving.pid).children(recursive=True)
    finally:
        serving.send_signal(signal.SIGINT)  # Ctrl-C
        serving.wait(60)
    assert serving.returncode is not None
    assert not [child for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]
