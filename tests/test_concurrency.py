"""One run per workspace: the run lock (held across processes, taken over from a killed holder), two pipeline
runs started at once on one workspace (both succeed, one after the other), and teardown scoped to its workspace."""

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

from phi3_pipeline.locks import WorkspaceBusyError, run_lock
from tests.conftest import QUICK_TRAINING, ROOT, run_cli

HOLD = ("import sys, time\nfrom pathlib import Path\nfrom phi3_pipeline.locks import run_lock\n"
        "with run_lock(Path(sys.argv[1]), True, print):\n    print('held', flush=True)\n    time.sleep(60)\n")


def holder(lock_file: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_file)], cwd=ROOT, stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_run_fails_at_once_naming_the_holder_or_waits_for_it(tmp_path):
    lock_file = tmp_path / "run.lock"
    other = holder(lock_file)
    try:
        with pytest.raises(WorkspaceBusyError, match=f"another run holds this workspace \\(pid {other.pid}, started"):
            with run_lock(lock_file, wait=False, on_wait=print):
                pass
        waited: list[str] = []
        started = time.monotonic()
        os.kill(other.pid, signal.SIGKILL)  # a killed holder's lock is released by the kernel: taken over
        with run_lock(lock_file, wait=True, on_wait=waited.append):
            assert time.monotonic() - started < 5
    finally:
        other.kill()
        other.wait()


def test_the_lock_is_reentrant_within_a_thread_so_the_teardown_subflow_does_not_wait_for_its_own_run(tmp_path):
    import threading

    lock_file = tmp_path / "run.lock"
    with run_lock(lock_file, wait=False, on_wait=print) as taken:
        with run_lock(lock_file, wait=False, on_wait=print) as taken_again:
            assert (taken, taken_again) == (True, False)
        refused = []

        def other_thread():  # another thread is another run
            try:
                with run_lock(lock_file, wait=False, on_wait=print):
                    pass
            except WorkspaceBusyError as error:
                refused.append(error)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(10)
        assert len(refused) == 1
        with pytest.raises(subprocess.CalledProcessError):  # still held: another process cannot take it
            subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path\n"
                            "from phi3_pipeline.locks import run_lock\n"
                            "with run_lock(Path(sys.argv[1]), False, print): pass", str(lock_file)],
                           cwd=ROOT, check=True, capture_output=True)


def test_two_runs_started_together_both_succeed_one_after_the_other(prefect_server, tmp_path):
    workspace = tmp_path / "ws"
    env = {**QUICK_TRAINING, "PHI3_LOCAL__WORKSPACE_DIR": str(workspace)}
    waits = 0
    try:
        for _trial in range(5):
            runs = [subprocess.Popen([sys.executable, "-m", "flows.full_pipeline"], cwd=ROOT, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **env})
                    for _ in range(2)]
            outputs = [run.communicate(timeout=600)[0] for run in runs]
            assert [run.returncode for run in runs] == [0, 0], outputs
            assert all("A: " in output for output in outputs)
            waits += sum("another run holds this workspace" in output for output in outputs)
            versions = sorted(p.name for p in (workspace / "registry" / "phi3-custom").iterdir() if p.is_dir())
            assert versions == ["1"], "one model version"
            endpoint = json.loads(next((workspace / "endpoints").glob("*.json")).read_text())
            (live,) = endpoint["traffic"]
            state = json.loads((workspace / "deployments" / live / "state.json").read_text())
            servers = [p for p in psutil.process_iter(["cmdline"])
                       if "phi3_pipeline.targets.local.scoring_server" in " ".join(p.info["cmdline"] or [])
                       and str(workspace) in " ".join(p.info["cmdline"] or [])]
            assert len(servers) == 1 and servers[0].pid == state["pid"], "one server serving"
            key = (workspace / "secrets" / "endpoint.key").read_text().strip()
            chat = {"input_data": {"input_string": [{"role": "user", "content": "Who founded Microsoft?"}],
                                   "parameters": {"max_new_tokens": 8}}}
            answer = requests.post(endpoint["scoring_uri"], json=chat, timeout=60,
                                   headers={"Authorization": f"Bearer {key}"})
            assert answer.status_code == 200, "the endpoint answers after both runs end"
        assert waits >= 1, "at least once, one run waited for the other"
        assert not list((workspace / "scratch").glob("*")), "each run removed its own scratch folder"
    finally:
        run_cli("flows.teardown", env=env)


def test_a_teardown_of_a_workspace_that_never_existed_makes_nothing(prefect_server, tmp_path):
    workspace = tmp_path / "never"
    done = run_cli("flows.teardown", env={"PHI3_LOCAL__WORKSPACE_DIR": str(workspace)})
    assert done.returncode == 0, done.stderr
    assert not workspace.exists()


def test_the_reaper_skips_a_workspace_a_run_holds_and_says_so_while_a_plain_teardown_does_not(prefect_api,
                                                                                             tmp_path):
    """A run may train for hours: the sweep never waits behind it (the next one tries again)."""
    import threading

    from flows.teardown import teardown
    from phi3_pipeline.config.settings import PipelineSettings
    from phi3_pipeline.targets import get_target

    settings = PipelineSettings(local={"workspace_dir": tmp_path / "ws"}, wait=False)
    lock_file = get_target(settings).run_lock_file(create=True)
    held, release = threading.Event(), threading.Event()

    def a_long_run():
        with run_lock(lock_file, wait=False, on_wait=print):
            held.set()
            release.wait(60)

    other = threading.Thread(target=a_long_run)
    other.start()
    try:
        assert held.wait(10)
        report = teardown(settings.model_copy(update={"wait": True}), older_than_hours=24)
        assert "the sweep skipped it" in report.skipped and report.removed == []
        with pytest.raises(WorkspaceBusyError):  # a plain teardown is not skipped (with wait, it waits)
            teardown(settings)
    finally:
        release.set()
        other.join()
