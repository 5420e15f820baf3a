"""The local target's processes: training jobs and scoring servers run in sessions of their own, so they
outlive an interrupted pipeline, and are found again by pid and command line (a recycled pid is not ours)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil

# where `python -m phi3_pipeline...` finds the package, whatever the caller's folder
IMPORT_ROOT = Path(__file__).resolve().parents[3]
STOP_TIMEOUT_S = 10


def process_alive(pid: int | None, module: str) -> bool:
    """True if `pid` is still one of our processes running `module` (a recycled pid is not). A process
    caught in the middle of exec shows an empty command line for an instant: that is ours, starting."""
    if not pid:
        return False
    try:
        process = psutil.Process(pid)
        cmdline = process.cmdline()
        return process.status() != psutil.STATUS_ZOMBIE and (not cmdline or module in " ".join(cmdline))
    except psutil.Error:
        return False


def stop_process(pid: int) -> None:
    """SIGTERM the process group, then SIGKILL what is left after a grace period."""
    try:
        os.killpg(pid, signal.SIGTERM)
        psutil.Process(pid).wait(STOP_TIMEOUT_S)
    except psutil.TimeoutExpired:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass


def spawn(module: str, folder: Path, log_name: str) -> int:
    """Start `python -m module folder` in its own session, so it outlives an interrupted pipeline."""
    with (folder / log_name).open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, str(folder)],
            cwd=IMPORT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process.pid


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
