"""One writer per workspace across machines that share a Prefect server (tasks/workspace_slot.py): processes of
their own against a real Prefect server, as runs on two machines would be."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import requests

from tasks.workspace_slot import LEASE_S
from tests.conftest import ROOT, start_prefect_server

# A flow that holds the workspace slot of KEY until killed, saying so on its output.
HOLDER = textwrap.dedent("""
    import sys, time
    from prefect import flow
    from prefect.context import FlowRunContext
    from phi3_pipeline.locks import WorkspaceBusyError
    from tasks.workspace_slot import workspace_slot

    @flow(name=sys.argv[3])
    def hold(key: str, wait: bool) -> None:
        run_id = FlowRunContext.get().flow_run.id
        with workspace_slot(key, run_id, wait, lambda holder: print("waiting for", holder, flush=True)):
            print("holding", flush=True)
            time.sleep(600)

    try:
        hold(sys.argv[1], sys.argv[2] == "wait")
    except WorkspaceBusyError as busy:
        print(f"error: {busy}", file=sys.stderr)
        sys.exit(2)
""")


def holder(api_url: str, key: str, wait: bool, name: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, key, "wait" if wait else "no-wait", name], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PREFECT_API_URL": api_url, "PYTHONPATH": str(ROOT)})


def said(process: subprocess.Popen, start: str, timeout: float = 120) -> str:
    """The process's next output line, which must start with `start`, within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith(start):
            return line
        assert line or process.poll() is None, f"it ended: {process.stderr.read()}"
    pytest.fail(f"no line starting {start!r} within {timeout} s")


def test_global_limit_one_run_per_workspace_names_the_holder_and_frees_a_killed_runs_slot(prefect_server):
    key = uuid.uuid4().hex[:12]
    first = holder(prefect_server, key, wait=False, name="first-holder")
    processes = [first]
    try:
        said(first, "holding")
        limit = requests.get(f"{prefect_server}/v2/concurrency_limits/phi3-workspace-{key}", timeout=10).json()
        assert (limit["limit"], limit["active"]) == (1, True), "made when missing, with one slot"

        refused = holder(prefect_server, key, wait=False, name="second-holder")
        processes.append(refused)
        assert refused.wait(120) == 2
        error = refused.stderr.read().strip().splitlines()[-1]
        assert error.startswith("error: another run holds this workspace on the Prefect server (flow run '")
        assert "running since" in error and "--no-wait" in error

        waiter = holder(prefect_server, key, wait=True, name="third-holder")
        processes.append(waiter)
        assert "flow run '" in said(waiter, "waiting for")
        os.killpg(first.pid, signal.SIGKILL)  # the holder's machine dies: its lease runs out, the slot frees
        killed_at = time.monotonic()
        said(waiter, "holding", timeout=180)
        assert time.monotonic() - killed_at < LEASE_S + 60, "freed once the lease ran out (and Prefect saw it)"
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.system
def test_global_limit_slot_of_a_killed_run_frees_after_its_prefect_server_restarted(tmp_path):
    """The server restarts while a killed run's slot is taken: it finds the run's lease on disk (prefect.toml's
    lease storage; Prefect's default keeps leases in memory, and the slot would stay taken for good) and frees
    the slot once the lease has run out."""
    server_env = {"PREFECT_HOME": str(tmp_path / "prefect")}  # a database and leases of its own, across restarts
    server, api_url = start_prefect_server(tmp_path / "server.log", server_env)
    processes = []
    try:
        key = uuid.uuid4().hex[:12]
        killed = holder(api_url, key, wait=False, name="killed-holder")
        processes.append(killed)
        said(killed, "holding")
        os.killpg(killed.pid, signal.SIGKILL)
        server.terminate()
        server.wait(30)
        server, api_url = start_prefect_server(tmp_path / "restarted.log", server_env)
        restarted_at = time.monotonic()
        waiter = holder(api_url, key, wait=True, name="after-restart")
        processes.append(waiter)
        said(waiter, "holding", timeout=LEASE_S + 120)
        assert time.monotonic() - restarted_at < LEASE_S + 60
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        server.terminate()
        server.wait(30)


def test_global_limit_is_taken_on_a_shared_server_only_not_on_a_commands_own_temporary_one(monkeypatch):
    """A command's temporary server dies with its run and serves no other: its runs take no slot (a slot left
    taken by a killed run there would outlive the lease Prefect keeps in that server's memory)."""
    from phi3_pipeline.cli.prefect_api import _pointed_at
    from tasks.workspace_slot import on_a_shared_server

    monkeypatch.setattr("phi3_pipeline.cli.prefect_api.drain_to_the_server", lambda timeout_s: None)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: None}):
        assert not on_a_shared_server(), "Prefect's in-process ephemeral API"
    with _pointed_at("http://127.0.0.1:9/api"):
        assert not on_a_shared_server(), "the command's own server"
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert on_a_shared_server(), "the same URL, named by the user: a server others may share"
