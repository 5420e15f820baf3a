"""Shared fixtures: a private home for Prefect and Prompt flow, a Prefect server, a trained model."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from phi3_pipeline.cli.prefect_api import ServerDidNotStart, start_logged, wait_until_answering

ROOT = Path(__file__).resolve().parents[1]
SESSION_HOME = pytest.StashKey[Path]()
PREFECT_SERVER_START_S = 180
# Small but real training settings for tests that need a model, not a good one.
QUICK_TRAINING = {
    "PHI3_TRAINING__EPOCHS": "3",
    "PHI3_TRAINING__BASE_PRETRAIN_STEPS": "40",
    "PHI3_DATASET__SAMPLE_SIZE": "200",
}


@contextmanager
def served_in_a_thread(run: Callable[[], None], stop: Callable[[], None]) -> Iterator[None]:
    """A test server's loop (`run`) in a daemon thread for the block; `stop` ends it."""
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop()
        thread.join(10)


def fake_nvidia_smi(folder: Path, monkeypatch, total_mib: int = 15360, free_mib: int = 3072,
                    held_by: int = 0) -> None:
    """An nvidia-smi in `folder`, first on PATH: a Tesla T4 (its name ends with the device asked for, e.g.
    `--id=0`) on which process `held_by` holds 10 GiB; and torch taken for a CUDA build."""
    import torch.version

    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\ncase \"$*\" in\n"
                      f"  *--query-gpu*) echo \"Tesla T4 $1, {total_mib}, {free_mib}\";;\n"
                      f"  *--query-compute-apps*) echo \"{held_by}, 10240\"; echo \"1, 999\";;\nesac\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    monkeypatch.setattr(torch.version, "cuda", "12.8")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pytest_configure(config):
    """Prefect and Prompt flow make their log handlers once per process, on the sys.stderr of that moment: make
    them now, on the session's stream, not on the `capsys` stream of whichever test first runs a flow or loads
    Prompt flow (closed after that test: a later flow's log line then fails, and Prompt flow, which logs that
    failure to the same stream, recurses)."""
    from prefect.logging.configuration import setup_logging

    home = Path(tempfile.mkdtemp(prefix="phi3-test-home-"))
    config.stash[SESSION_HOME] = home
    os.environ.update({  # before Prompt flow is loaded: it reads its home folder once, on import
        "PREFECT_HOME": str(home / "prefect"),
        "PF_HOME_DIRECTORY": str(home / "promptflow"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_COLORS": "false",
        "HF_HUB_OFFLINE": "1",  # nothing in the tests may reach a hub
    })
    from phi3_pipeline.chat_flow import promptflow_chat

    setup_logging()
    promptflow_chat.load()


def pytest_unconfigure(config):
    shutil.rmtree(config.stash.get(SESSION_HOME, None) or "/nonexistent", ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """A test that starts a real Prefect server is in the `system` tier (`python -m pytest -m system`), as are the
    ones marked so because they run the command line in a subprocess or kill processes."""
    for item in items:
        if "prefect_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.system)


@pytest.fixture(scope="session")
def session_home(pytestconfig) -> Path:
    """Prefect and Prompt flow state of the whole test session, away from the user's home (made, and named in
    the environment, when the session starts)."""
    return pytestconfig.stash[SESSION_HOME]


def start_prefect_server(log_file: Path, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """A real Prefect server on 127.0.0.1 (its own session, its output in `log_file`); (process, API URL)."""
    port = free_port()
    server = start_logged([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                           str(port)], log_file, {**os.environ, **(env or {})}, cwd=ROOT, start_new_session=True)
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        wait_until_answering(server, api_url, PREFECT_SERVER_START_S, log_file)
    except ServerDidNotStart as error:
        server.kill()
        pytest.fail(str(error))
    return server, api_url


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


@pytest.fixture(scope="session")
def prefect_api(session_home: Path):
    """Prefect's test harness for flows run in this process (a temporary API server with its own database, for
    the whole session); its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=PREFECT_SERVER_START_S):
        yield PREFECT_API_URL.value()


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
    """The Azure target's real SDK clients, every request answered by the in-memory Resource Manager, and the
    workspace lease's by the fake Blob Storage (on a transport of its own). Blob uploads and the hub/project
    template deployments (which bypass the clients' transport) are recorded instead of sent. Yields (arm,
    transport, uploads, template deployments, storage, storage transport)."""
    from types import SimpleNamespace

    from azure.ai.ml._artifacts._blob_storage_helper import BlobStorageClient
    from azure.ai.ml.operations import _workspace_operations_base

    from phi3_pipeline.targets.azure import clients
    from tests.azure_fakes import FakeTemplateDeployments, OfflineCredential, ScriptedTransport
    from tests.storage_fakes import FakeBlobStorage

    transport = ScriptedTransport(arm)
    storage = FakeBlobStorage()
    storage_transport = ScriptedTransport(storage)
    uploads: list[tuple[str, str, str]] = []
    templates = FakeTemplateDeployments(arm)

    def upload(self, source, name, version, ignore_file=None, asset_hash=None, show_progress=True):
        uploads.append((source, name, version))
        remote = f"LocalUpload/{asset_hash}/{os.path.basename(source)}"
        return {"remote path": remote, "name": name, "version": version, "indicator file": remote}

    monkeypatch.setattr(BlobStorageClient, "upload", upload)
    monkeypatch.setattr(_workspace_operations_base, "ArmDeploymentExecutor", templates.executor)
    monkeypatch.setattr(clients, "connect", lambda azure: clients.make_clients(
        azure, clients.sign_in(azure, OfflineCredential()), transport=transport, retry_backoff_factor=0.01,
        storage_options={"transport": storage_transport, "retry_backoff_factor": 0.01}))
    return SimpleNamespace(arm=arm, transport=transport, uploads=uploads, templates=templates, storage=storage,
                           storage_transport=storage_transport)


def run_cli(module: str, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m module args` from the repository root, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )
