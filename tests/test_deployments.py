"""prefect.yaml on a real Prefect server: `prefect deploy --all` onto a process work pool, then a process
worker (started and stopped here) runs the full-pipeline deployment and the teardown deployment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import QUICK_TRAINING, ROOT
from tests.test_e2e import processes_using

POOL = "phi3-process"


def prefect_cli(api_url: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefect", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PREFECT_API_URL": api_url, "PWD": str(ROOT)})


@pytest.fixture(scope="module")
def deployments(prefect_server) -> dict[str, dict]:
    pool = prefect_cli(prefect_server, "work-pool", "create", POOL, "--type", "process", "--overwrite")
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deployed = prefect_cli(prefect_server, "--no-prompt", "deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    return {d["name"]: d for d in requests.post(f"{prefect_server}/deployments/filter", json={},
                                                timeout=10).json()}


def test_prefect_yaml_deploys_the_pipeline_retraining_teardown_and_reaper(deployments):
    assert {"full-pipeline", "scheduled-retraining", "teardown", "reaper"} <= set(deployments)
    for deployment in deployments.values():
        assert deployment["work_pool_name"] == POOL
        assert deployment["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(ROOT)

    form = deployments["full-pipeline"]["parameter_openapi_schema"]
    for name in ("full-pipeline", "teardown"):  # the form opens on the settings, nothing frozen in it
        settings_field = deployments[name]["parameter_openapi_schema"]["properties"]["settings"]
        assert settings_field["$ref"] == "#/definitions/PipelineSettings" and settings_field["default"] == {}
        assert "anyOf" not in settings_field and "settings" not in deployments[name]["parameters"]
    settings_schema = form["definitions"]["PipelineSettings"]["properties"]
    assert settings_schema["target"]["enum"] == ["local", "azure"]
    training = form["definitions"]["TrainingSettings"]["properties"]
    assert training["learning_rate"]["default"] == 0.005 and training["learning_rate"]["description"]
    assert settings_schema["target"]["default"] == "local" and settings_schema["question"]["default"]

    def crons(name: str) -> list[str]:
        return [s["schedule"]["cron"] for s in deployments[name]["schedules"]]

    assert crons("scheduled-retraining") == ["0 3 * * 1"] and crons("reaper") == ["0 * * * *"]
    assert deployments["scheduled-retraining"]["parameters"] == {"settings": {"skip_unchanged": True}}
    assert deployments["reaper"]["parameters"] == {"older_than_hours": 24}
    assert crons("full-pipeline") == [] and crons("teardown") == []


def run_the_pipeline_then_the_teardown(api_url: str, workspace: Path, as_the_ui_form_sends: bool = False) -> None:
    """Trigger the full-pipeline deployment (quick settings, the answer artifact checked, the server up), then
    the teardown deployment (nothing of the run left running or answering). The settings name the workspace,
    or, `as_the_ui_form_sends`, hold every field with its default but the changed ones (the UI's Custom run
    form): the workspace then comes from where the deployment runs."""
    from phi3_pipeline.config.settings import PipelineSettings

    quick = {"epochs": int(QUICK_TRAINING["PHI3_TRAINING__EPOCHS"]),
             "base_pretrain_steps": int(QUICK_TRAINING["PHI3_TRAINING__BASE_PRETRAIN_STEPS"])}
    settings = {"local": {"workspace_dir": str(workspace)}, "training": quick,
                "dataset": {"sample_size": int(QUICK_TRAINING["PHI3_DATASET__SAMPLE_SIZE"])},
                "question": "Who founded Apple?"}
    stop_settings = {"local": {"workspace_dir": str(workspace)}}
    if as_the_ui_form_sends:
        form = PipelineSettings.model_construct().model_dump(mode="json")
        stop_settings = form
        settings = {**form, "question": settings["question"], "training": {**form["training"], **quick},
                    "dataset": {**form["dataset"], **settings["dataset"]}}
    run = prefect_cli(api_url, "deployment", "run", "phi3-full-pipeline/full-pipeline", "--params",
                      json.dumps({"settings": settings}), "--watch", "--watch-timeout", "600", timeout=700)
    assert run.returncode == 0, run.stdout + run.stderr
    answers = requests.post(f"{api_url}/artifacts/filter", timeout=10, json={
        "artifacts": {"key": {"any_": ["smoke-chat-answer"]}}, "sort": "CREATED_DESC", "limit": 1}).json()
    assert "**Q:** Who founded Apple?" in answers[0]["data"] and "**A (Prompt flow):** " in answers[0]["data"]
    scoring_uri = json.loads((workspace / "endpoints" / "phi3-custom-endpoint.json").read_text())["scoring_uri"]
    assert requests.get(scoring_uri.removesuffix("score"), timeout=10).ok, "the server is up after the run"

    stop = prefect_cli(api_url, "deployment", "run", "phi3-teardown/teardown", "--params",
                       json.dumps({"settings": stop_settings}), "--watch",
                       "--watch-timeout", "300", timeout=400)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert processes_using(workspace) == [], "nothing of the run is left running"
    with pytest.raises(requests.ConnectionError):
        requests.get(scoring_uri.removesuffix("score"), timeout=5)


def test_a_worker_runs_the_pipeline_from_its_deployment_and_the_teardown_deployment_stops_it(
        deployments, prefect_server, tmp_path):
    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL], cwd=ROOT, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # a scheduled run (the hourly reaper) that comes due meanwhile works in a test folder, not the repository's
        env={**os.environ, "PREFECT_API_URL": prefect_server, "PHI3_LOCAL__WORKSPACE_DIR": str(tmp_path / "other")})
    try:
        run_the_pipeline_then_the_teardown(prefect_server, tmp_path / "ws")
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
