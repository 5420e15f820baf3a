"""The local endpoint: a scoring server per deployment, and the endpoint's traffic, as files in the workspace.

`deployments/<name>/` holds what a server serves (`spec.json`), its pid from the moment it is started
(`server.pid`: a server still loading its model has no state yet, and must be found to be stopped), where it
listens once healthy (`state.json`, written by the server) and its log; `endpoints/<endpoint>.json` holds the
traffic and since when it is live (what the reaper ages). A deployment's server is ours only while its pid runs
the scoring-server module.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import requests

from phi3_pipeline.config.errors import ConfigError, PipelineError, TransientError
from phi3_pipeline.serving.chat_model import find_checkpoint
from phi3_pipeline.targets.local import processes, server_sizing
from phi3_pipeline.targets.local.machine import GiB
from phi3_pipeline.targets.local.scoring_server import CONFIG_ERROR_PREFIX
from phi3_pipeline.targets.workspace import Workspace, read_json, write_json_atomic

SERVER_MODULE = "phi3_pipeline.targets.local.scoring_server"
# How long a server may take to answer its first health probe: a base allowance, and time to load each GiB of
# weights (a CPU reads a bf16 checkpoint and converts it to fp32).
SERVER_START_TIMEOUT_S = 180
SERVER_LOAD_S_PER_GIB = 30
PID_FILE = "server.pid"


class LocalEndpoint:
    """One endpoint's files and servers in a workspace; changes are made under `lock()`."""

    def __init__(self, ws: Workspace, name: str) -> None:
        self.ws, self.name = ws, name

    def lock(self):
        return self.ws.lock(f"endpoint-{self.name}")

    @property
    def file(self) -> Path:
        return self.ws.dir("endpoints") / f"{self.name}.json"

    def deployment_dir(self, deployment_name: str) -> Path:
        return self.ws.root / "deployments" / deployment_name

    def deployments(self) -> list[Path]:
        root = self.ws.root / "deployments"
        return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []

    def traffic(self) -> dict[str, int]:
        return (read_json(self.file) or {}).get("traffic", {})

    def route_all_to(self, deployment_name: str, scoring_uri: str, since: float | None = None) -> bool:
        """All traffic to one deployment; whether it moved. The live-since time is kept when it did not, and is
        `since` when given (traffic restored to the model that served before)."""
        endpoint = read_json(self.file) or {}
        traffic = {deployment_name: 100}
        moved = endpoint.get("traffic") != traffic
        live_since = since if since is not None else time.time() if moved else endpoint["live_since"]
        write_json_atomic(self.file, {"scoring_uri": scoring_uri, "traffic": traffic, "live_since": live_since})
        return moved

    def live_since(self) -> float | None:
        return (read_json(self.file) or {}).get("live_since")

    @staticmethod
    def server_state(deployment_dir: Path) -> dict | None:
        """Where the deployment's server listens, if it is running."""
        state = read_json(deployment_dir / "state.json")
        return state if state and processes.process_alive(state.get("pid"), SERVER_MODULE) else None

    def serves_on(self, port: int) -> bool:
        """One of this workspace's servers listens on the port."""
        return any((self.server_state(d) or {}).get("port") == port for d in self.deployments())

    def start_server(self, deployment_dir: Path, spec: dict) -> dict:
        """Start the deployment's server on `spec["port"]` (0: any free port; the port the live deployment
        holds: a free one beside it) and wait until it answers; its state."""
        port = spec["port"]
        if port and self.serves_on(port):  # the live deployment holds it: the candidate starts beside it
            port = 0
        if port and not processes.port_is_free(port):
            raise ConfigError(f"local.port {port} is in use on 127.0.0.1: stop what listens there or set local.port=0")
        _stop(_server_pid(deployment_dir))  # one a killed run left loading would write its state over ours
        (deployment_dir / "state.json").unlink(missing_ok=True)
        write_json_atomic(deployment_dir / "spec.json", {**spec, "port": port})
        pid = processes.spawn(SERVER_MODULE, deployment_dir, "server.log")
        (deployment_dir / PID_FILE).write_text(str(pid), encoding="utf-8")
        timeout_s = start_timeout_s(spec["model_dir"])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = read_json(deployment_dir / "state.json")
            if state and state.get("pid") == pid and _answers(state):
                return state
            if not processes.process_alive(pid, SERVER_MODULE):
                log_tail = (deployment_dir / "server.log").read_text(errors="replace").strip().splitlines()[-3:]
                if log_tail and log_tail[-1].startswith(CONFIG_ERROR_PREFIX):
                    raise ConfigError(log_tail[-1].removeprefix(CONFIG_ERROR_PREFIX))
                raise PipelineError(f"scoring server exited while starting: {' | '.join(log_tail)}")
            time.sleep(0.3)
        processes.stop_process(pid)
        raise TransientError(f"scoring server did not become healthy within {timeout_s:.0f} s")

    @staticmethod
    def stop_server(state: dict) -> None:
        processes.stop_process(state["pid"])

    @staticmethod
    def remove(deployment_dir: Path) -> bool:
        """Stop the deployment's server, healthy or still starting, and remove its folder; whether one ran."""
        running = _stop(_server_pid(deployment_dir))
        shutil.rmtree(deployment_dir, ignore_errors=True)
        return running


def start_timeout_s(model_dir: str) -> float:
    """SERVER_START_TIMEOUT_S, and SERVER_LOAD_S_PER_GIB for each GiB of weights the server loads."""
    try:
        weights = server_sizing.served_weight_bytes(find_checkpoint(model_dir))
    except (OSError, ValueError, KeyError):  # the server itself says what is wrong with the model
        weights = 0
    return SERVER_START_TIMEOUT_S + SERVER_LOAD_S_PER_GIB * weights / GiB


def _server_pid(deployment_dir: Path) -> int | None:
    """The pid its server wrote once healthy, else the one the pipeline wrote when it started it."""
    if pid := (read_json(deployment_dir / "state.json") or {}).get("pid"):
        return pid
    try:
        return int((deployment_dir / PID_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def _stop(pid: int | None) -> bool:
    """Stop the server `pid` if it is still ours; whether it was."""
    running = processes.process_alive(pid, SERVER_MODULE)
    if running:
        processes.stop_process(pid)
    return running


def _answers(state: dict) -> bool:
    try:
        return requests.get(f"http://{state['host']}:{state['port']}/", timeout=2).ok
    except requests.RequestException:
        return False
