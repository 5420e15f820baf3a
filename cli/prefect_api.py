"""A Prefect API for one command-line run that dies with it.

With no Prefect server configured, Prefect starts a temporary API server as a child process and stops it
from `atexit`, which a SIGKILL never runs: the server then lives on, orphaned, listening on 127.0.0.1. Here
the same server (Prefect's app under uvicorn, with the environment Prefect gives its temporary server:
`cli.api_server`) is started as a child that the kernel kills together with this process (Linux's parent-death
signal, set by util-linux `setpriv --pdeathsig KILL` before it execs the server), and the run is pointed at
it. Its listening socket is made here and handed over, so no other process can take its port between the
two, and a request sent while it loads waits in the socket's backlog until it answers. Without such a
`setpriv`, with PREFECT_API_URL set, or with Prefect's temporary server turned off
(`server.ephemeral.enabled`), Prefect's own behaviour is kept.

A command started from a terminal starts that server first of all (`start_loading_now`, before it imports
Prefect, which alone takes a second: see `cli.startup`), so that the server and the command load side by side.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from importlib import import_module

# What Prefect's own temporary server runs with (prefect.server.api.server.SubprocessASGIServer, 3.8):
# no UI, and the server's background services off.
TEMPORARY_SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
NEEDS_NO_SERVER = {"-h", "--help", "--plan"}

_loading: tuple[subprocess.Popen, str] | None = None  # started by start_loading_now, taken by the run


@cache
def _pdeathsig_wrapper() -> list[str] | None:
    """`setpriv --pdeathsig KILL` if this system's setpriv has it (util-linux 2.33 and later), else None."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    probe = subprocess.run([setpriv, "--pdeathsig", "KILL", "true"], capture_output=True, check=False)
    return [setpriv, "--pdeathsig", "KILL"] if probe.returncode == 0 else None


def _start(wrapper: list[str], env: dict) -> tuple[subprocess.Popen, str]:
    with socket.create_server(("127.0.0.1", 0)) as listening:
        server = subprocess.Popen([*wrapper, sys.executable, "-m", "cli.api_server", str(listening.fileno())],
                                  env=env, pass_fds=(listening.fileno(),), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        return server, f"http://127.0.0.1:{listening.getsockname()[1]}/api"


def start_loading_now(argv: list[str]) -> None:
    """Start this command's server before the command imports anything else. Not for flags that need no
    server, nor with PREFECT_API_URL in the environment; the server runs with this environment, whose Prefect
    settings (with the profile and the settings files, which the server reads as this process does) are the
    command's. One that the settings then do not want (a profile that names an API) is stopped unused, and
    one that the command never reaches dies with it."""
    global _loading
    wrapper = _pdeathsig_wrapper()
    if wrapper and "PREFECT_API_URL" not in os.environ and not NEEDS_NO_SERVER.intersection(argv):
        _loading = _start(wrapper, {**os.environ, **TEMPORARY_SERVER_ENV})


@contextmanager
def prefect_api_dying_with_this_process(while_starting: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Point Prefect at a server child of this process for the block (see the module's docstring). The server
    takes seconds to load; `while_starting` runs meanwhile (checks, imports), also without such a server."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        get_current_settings,
        temporary_settings,
    )

    global _loading
    loading, _loading = _loading, None
    settings = get_current_settings()
    wrapper = _pdeathsig_wrapper()
    if PREFECT_API_URL.value() or wrapper is None or not settings.server.ephemeral.enabled:
        if loading:
            _stop(loading[0])
        while_starting()
        yield
        return
    deadline = time.monotonic() + settings.server.ephemeral.startup_timeout_seconds
    server, api = loading or _start(
        wrapper, {**os.environ, **settings.to_environment_variables(exclude_unset=True), **TEMPORARY_SERVER_ENV})
    try:
        while_starting()
        import_module("fastapi.encoders")  # what Prefect 3.8 imports as it creates the flow run (0.15 s)
        # the environment too: Prefect's threads that do not share this context must not start a temporary
        # server of their own (one that would outlive a kill)
        os.environ["PREFECT_API_URL"] = api
        try:
            # no flow-run heartbeats: nothing watches them on a server that stops with the run, and a sync
            # flow's end waits for the heartbeat thread's current 1 s sleep (Prefect 3.8: 0.5 s a run on average)
            with temporary_settings({PREFECT_API_URL: api, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                _wait_until_answering(server, api, deadline)
                try:
                    yield
                finally:  # what the run logged and emitted reaches the server before it stops
                    APILogWorker.drain_all(timeout=10)
                    EventsWorker.drain_all(timeout=10)
        finally:
            os.environ.pop("PREFECT_API_URL", None)
    finally:
        _stop(server)


def _stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()


def _wait_until_answering(server: subprocess.Popen, api: str, deadline: float) -> None:
    """Wait for the server's answer to its health check: a request sent while it loads waits in its socket's
    backlog and is answered as soon as it serves."""
    import requests  # here: a command imports this module first of all, to start the server at once

    while True:
        try:
            if requests.get(f"{api}/health", timeout=max(0.1, min(2.0, deadline - time.monotonic()))).ok:
                return
        except requests.RequestException:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the Prefect API server for this run did not start; start one with "
                               "`prefect server start` and set PREFECT_API_URL")
        time.sleep(0.02)
