"""A Prefect API for one command-line run that dies with it.

With no Prefect server configured, Prefect starts a temporary API server as a child process and stops it
from `atexit`, which a SIGKILL never runs: the server then lives on, orphaned, listening on 127.0.0.1. Here
the same server (Prefect's app under uvicorn: `cli.api_server`) is started as a child that the kernel kills
together with this process (Linux's parent-death signal, set by util-linux `setpriv --pdeathsig KILL` before it
execs the server), and the run is pointed at it. Its listening socket is made here and handed over, so no other
process can take its port between the two, and a request sent while it loads waits in the socket's backlog.
The server's output goes to `SERVER_LOG` in PREFECT_HOME, which every message about it names.

Prefect's own behaviour is kept with PREFECT_API_URL set (a Prefect server runs) or Prefect's temporary server
turned off (`server.ephemeral.enabled`). It is also what this falls back to, with a one-line warning, when this
server cannot be had: no such `setpriv`, a Prefect release outside `TESTED_PREFECT`, or a server that does not
start.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import requests

from phi3_pipeline.cli.prefect_internals import TESTED_PREFECT, drain_to_the_server, prefect_is_tested
from phi3_pipeline.locks import private_prefect_api

SERVER_LOG = "phi3-pipeline-api-server.log"
SERVER_MODULE = "phi3_pipeline.cli.api_server"
HEALTH_POLL_S = 0.05


class ServerDidNotStart(RuntimeError):
    """A Prefect API server process ended, or did not answer its health check in time."""


@cache
def _pdeathsig_wrapper() -> list[str] | None:
    """`setpriv --pdeathsig KILL` if this system's setpriv has it (util-linux 2.33 and later), else None."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    probe = subprocess.run([setpriv, "--pdeathsig", "KILL", "true"], capture_output=True, check=False)
    return [setpriv, "--pdeathsig", "KILL"] if probe.returncode == 0 else None


def start_logged(command: list[str], log_file: Path, env: dict, **popen) -> subprocess.Popen:
    """Start a server process whose output is appended to `log_file`, after a line saying when it started."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        log.write(f"--- {datetime.now(UTC).isoformat(timespec='seconds')}: {' '.join(command)}\n".encode())
        log.flush()
        return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                **popen)


def wait_until_answering(server: subprocess.Popen, api: str, timeout_s: float, log_file: Path) -> None:
    """Wait for the server's answer to its health check; ServerDidNotStart, naming its log, if it ends first or
    does not answer within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(f"{api}/health", timeout=max(0.1, min(2.0, deadline - time.monotonic()))).ok:
                return
        except requests.RequestException:
            pass
        ended = server.poll()
        if ended is not None or time.monotonic() > deadline:
            why = f"ended with exit code {ended}" if ended is not None else f"did not answer in {timeout_s:.0f} s"
            raise ServerDidNotStart(f"the Prefect API server {why}; its output is in {log_file}")
        time.sleep(HEALTH_POLL_S)


def stop(server: subprocess.Popen, grace_s: float = 10) -> None:
    server.terminate()
    try:
        server.wait(grace_s)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _start_ours(wrapper: list[str], log_file: Path) -> tuple[subprocess.Popen, str]:
    from prefect.settings import get_current_settings

    env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True)}
    with socket.create_server(("127.0.0.1", 0)) as listening:
        command = [*wrapper, sys.executable, "-m", SERVER_MODULE, str(listening.fileno())]
        server = start_logged(command, log_file, env, pass_fds=(listening.fileno(),))
        return server, f"http://127.0.0.1:{listening.getsockname()[1]}/api"


def _why_not_ours() -> str | None:
    """Why this command cannot run its own server (a warning for the user), or None if it can."""
    if _pdeathsig_wrapper() is None:
        return "this system's setpriv has no --pdeathsig"
    if not prefect_is_tested():
        from importlib.metadata import version

        return f"Prefect {version('prefect')} is outside the releases this was tested with ({TESTED_PREFECT})"
    return None


def _warn(reason: str) -> None:
    print(f"warning: {reason}; using Prefect's own temporary API server (a killed run may leave it running)",
          file=sys.stderr)


def _did_not_start(server: subprocess.Popen, api: str, timeout_s: float, log_file: Path) -> str | None:
    """Why the server is not answering (its process ended, or the time ran out), or None once it answers."""
    try:
        wait_until_answering(server, api, timeout_s, log_file)
    except ServerDidNotStart as error:
        return str(error)
    return None


@contextmanager
def _pointed_at(api: str) -> Iterator[None]:
    """Prefect pointed at `api` for the block, in this context and in the environment (Prefect's threads that
    do not share the context must not start a temporary server of their own, one that would outlive a kill);
    what the run logged and emitted is sent before the block ends."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    os.environ["PREFECT_API_URL"] = api
    try:
        # no flow-run heartbeats: nothing watches them on a server that stops with the run, and a sync flow's
        # end waits for the heartbeat thread's current 1 s sleep (Prefect 3.8: 0.5 s a run on average)
        with temporary_settings({PREFECT_API_URL: api, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), \
                private_prefect_api(api):
            try:
                yield
            finally:
                drain_to_the_server(timeout_s=10)
    finally:
        os.environ.pop("PREFECT_API_URL", None)


@contextmanager
def prefect_api_dying_with_this_process(while_starting: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Point Prefect at a server child of this process for the block (see the module's docstring). The server
    takes seconds to load; `while_starting` runs meanwhile (checks), also when Prefect's behaviour is kept."""
    from prefect.settings import PREFECT_API_URL, get_current_settings

    settings = get_current_settings()
    wanted = not PREFECT_API_URL.value() and settings.server.ephemeral.enabled
    if wanted and (reason := _why_not_ours()):
        _warn(reason)
        wanted = False
    with ExitStack() as stack:
        if wanted:
            log_file = settings.home / SERVER_LOG
            server, api = _start_ours(_pdeathsig_wrapper(), log_file)
            stack.callback(stop, server)
        while_starting()
        if wanted and (problem := _did_not_start(server, api, settings.server.ephemeral.startup_timeout_seconds,
                                                 log_file)):
            _warn(problem)  # the run goes on with Prefect's own server
        elif wanted:
            stack.enter_context(_pointed_at(api))
        yield
