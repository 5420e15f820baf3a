"""Shared fixtures: a private home for Prefect and Prompt flow, a Prefect server, a trained model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
# Small but real training settings for tests that need a model, not a good one.
QUICK_TRAINING = {
    "PHI3_TRAINING__EPOCHS": "3",
    "PHI3_TRAINING__BASE_PRETRAIN_STEPS": "40",
    "PHI3_DATASET__SAMPLE_SIZE": "200",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pytest_collection_modifyitems(config, items):
    """Slow suites run in CI (CI=true, as `.ci/run` has it) and otherwise only when asked for with CI=true."""
    if os.environ.get("CI", "").lower() == "true":
        return
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="slow suite: runs where CI=true (e.g. CI=true python -m pytest)"))


@pytest.fixture(scope="session")
def session_home(tmp_path_factory) -> Path:
    """Prefect and Prompt flow state of the whole test session, away from the user's home."""
    home = tmp_path_factory.mktemp("home")
    os.environ.update({
        "PREFECT_HOME": str(home / "prefect"),
        "PF_HOME_DIRECTORY": str(home / "promptflow"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_COLORS": "false",
        "HF_HUB_OFFLINE": "1",  # nothing in the tests may reach a hub
    })
    return home


def start_prefect_server(log_file: Path, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """A real Prefect server on 127.0.0.1 (its own session, its output in `log_file`); (process, API URL)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, stdout=log_file.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    api_url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{api_url}/health", timeout=2).ok:
                return server, api_url
        except requests.RequestException:
            time.sleep(1)
    server.kill()
    pytest.fail(f"Prefect server did not start; see {log_file}")


@pytest.fixture(scope="session")
def prefect_server(session_home: Path):
    """A real Prefect server on 127.0.0.1 for every CLI run of the session, stopped at the end."""
    server, api_url = start_prefect_server(session_home / "prefect-server.log")
    os.environ["PREFECT_API_URL"] = api_url
    try:
        yield api_url
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # send this process's last Prefect logs while the server listens
    finally:
        server.terminate()
        server.wait(30)


@pytest.fixture
def arm():
    """An in-memory Azure Resource Manager for the test workspace."""
    from tests.azure_fakes import WORKSPACE, FakeArm

    return FakeArm(WORKSPACE)


@pytest.fixture
def azure_settings(tmp_path, session_home, monkeypatch):
    """Settings of an Azure run against the test workspace; the fake job needs no minute-long polls."""
    from phi3_pipeline.config.settings import PipelineSettings
    from phi3_pipeline.targets.azure.target import AzureTarget
    from tests.azure_fakes import AZURE

    monkeypatch.setattr(AzureTarget, "first_poll_interval_s", 0.01)
    monkeypatch.setattr(AzureTarget, "max_poll_interval_s", 0.01)
    return PipelineSettings(target="azure", azure=AZURE, local={"workspace_dir": tmp_path / "ws"},
                            dataset={"sample_size": 200}, connection_name="phi3_azure_test")


@pytest.fixture
def cloud(arm):
    """(MLClient, transport) whose requests the in-memory Resource Manager answers."""
    from tests.azure_fakes import offline_ml_client

    return offline_ml_client(arm)


@pytest.fixture
def azure_cloud(arm, monkeypatch):
    """The Azure target's real SDK clients, every request answered by the in-memory Resource Manager.
    Blob uploads and the hub/project template deployments (which bypass the clients' transport) are
    recorded instead of sent. Yields (arm, transport, uploads, template deployments)."""
    from types import SimpleNamespace

    from azure.ai.ml._artifacts._blob_storage_helper import BlobStorageClient
    from azure.ai.ml.operations import _workspace_operations_base

    from phi3_pipeline.targets.azure import clients
    from tests.azure_fakes import FakeTemplateDeployments, OfflineCredential, ScriptedTransport

    transport = ScriptedTransport(arm)
    uploads: list[tuple[str, str, str]] = []
    templates = FakeTemplateDeployments(arm)

    def upload(self, source, name, version, ignore_file=None, asset_hash=None, show_progress=True):
        uploads.append((source, name, version))
        remote = f"LocalUpload/{asset_hash}/{os.path.basename(source)}"
        return {"remote path": remote, "name": name, "version": version, "indicator file": remote}

    monkeypatch.setattr(BlobStorageClient, "upload", upload)
    monkeypatch.setattr(_workspace_operations_base, "ArmDeploymentExecutor", templates.executor)
    monkeypatch.setattr(clients, "connect", lambda azure: clients.make_clients(
        azure, clients.sign_in(azure, OfflineCredential()), transport=transport, retry_backoff_factor=0.01))
    return SimpleNamespace(arm=arm, transport=transport, uploads=uploads, templates=templates)


def run_cli(module: str, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m module args` from the repository root, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )
