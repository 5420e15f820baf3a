"""Retraining on the local target, from the terminal against a real Prefect server: unchanged data is
skipped without training; changed data goes blue/green behind the evaluation gate, which either moves
the traffic (old server gone) or leaves it where it was (candidate gone, the run fails saying why)."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from tests.conftest import QUICK_TRAINING, run_cli
from tests.test_e2e import answer_of

CHANGED_DATA = ["--dataset.sample_size", "210"]


def endpoint(workspace: Path) -> dict:
    return json.loads((workspace / "endpoints" / "phi3-custom-endpoint.json").read_text())


def servers(workspace: Path) -> list[str]:
    return sorted(p.name for p in (workspace / "deployments").iterdir())


def artifact(api_url: str, key: str) -> dict:
    found = requests.post(f"{api_url}/artifacts/filter", timeout=10, json={
        "artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1}).json()
    return found[0]


def test_retraining_skips_unchanged_data_and_gates_a_changed_model(tmp_path, prefect_server):
    workspace = tmp_path / "ws"
    env = {**QUICK_TRAINING, "PHI3_LOCAL__WORKSPACE_DIR": str(workspace)}
    first = run_cli("flows.full_pipeline", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert endpoint(workspace)["traffic"] == {"phi3-custom-v1": 100}
    jobs = sorted(p.name for p in (workspace / "jobs").iterdir())

    unchanged = run_cli("flows.full_pipeline", "--skip_unchanged", env=env)
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    assert "nothing to retrain: live: phi3-custom-v1" in unchanged.stdout
    assert "fine-tune" not in unchanged.stdout and "A: " not in unchanged.stdout
    assert sorted(p.name for p in (workspace / "jobs").iterdir()) == jobs

    refused = run_cli("flows.full_pipeline", *CHANGED_DATA, "--evaluation.margin", "-1", env=env)
    assert refused.returncode == 1
    last_line = refused.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: gate failed: phi3-custom-v2 token F1") and "traffic stays on" in last_line
    assert endpoint(workspace)["traffic"] == {"phi3-custom-v1": 100}
    assert servers(workspace) == ["phi3-custom-v1"], "the candidate is removed, the live server stays"
    live = requests.post(endpoint(workspace)["scoring_uri"], timeout=60, json={
        "input_data": {"input_string": [{"role": "user", "content": "Who founded Microsoft?"}]}},
        headers={"Authorization": f"Bearer {(workspace / 'secrets' / 'endpoint.key').read_text().strip()}"})
    assert live.status_code == 200
    notice = artifact(prefect_server, "failure-notice")["data"]
    assert "failed at stage: evaluation gate" in notice and "Still running: deployment phi3-custom-v1" in notice

    promoted = run_cli("flows.full_pipeline", *CHANGED_DATA, "--evaluation.margin", "1", "--skip_unchanged",
                       "--chat_front_end", "both", env=env)  # the agent's smoke chat too, said in the summary
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    (smoke,) = [line for line in promoted.stdout.splitlines() if line.startswith("smoke chat")]
    assert "Prompt flow answered: " in smoke and "; Agent Framework answered: " in smoke, smoke
    assert "live: phi3-custom-v1 (job " in promoted.stdout and "new data or settings" in promoted.stdout
    assert answer_of(promoted)
    assert "gate passed: phi3-custom-v2" in promoted.stdout
    assert "fine-tune            reused (cached)" in promoted.stdout, "the gated job is not trained twice"
    assert endpoint(workspace)["traffic"] == {"phi3-custom-v2": 100}
    assert servers(workspace) == ["phi3-custom-v2"], "the old server is stopped once traffic moved"
    gate = json.loads(artifact(prefect_server, "evaluation-gate")["data"])[0]
    assert gate["passed"] is True and gate["live"] == "phi3-custom-v1" and gate["questions"] == 8
    assert 0.0 <= gate["candidate_f1"] <= 1.0 and 0.0 <= gate["live_f1"] <= 1.0

    done = run_cli("flows.teardown", env=env)
    assert done.returncode == 0 and servers(workspace) == []
