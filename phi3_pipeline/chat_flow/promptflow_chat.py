"""Prompt flow glue shared by every target: the custom connection and the chat flow run.

Prompt flow keeps connections in its home folder (PF_HOME_DIRECTORY, default ~/.promptflow) with
secrets encrypted; the project turns off its tracing service and telemetry there, so a run starts
no background daemon and sends nothing outside.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import yaml

from phi3_pipeline.chat_flow.scoring_contract import SCORING_TOKEN_SCOPE
from phi3_pipeline.config.errors import PipelineError

CHAT_FLOW_DIR = Path(__file__).resolve().parent
FLOW_FILE = "flow.dag.yaml"
TOOL_NODE = "integrate_with_promptflow"
OFFLINE_CONFIG = {"trace.destination": "none", "telemetry.enabled": False}
# Prompt flow builds an Azure Monitor log exporter even with telemetry off, and the exporter then
# fetches its settings from an outside host; these switches stop it calling out.
EXPORTER_OFFLINE_ENV = {"APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
                        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true"}
for _name, _value in EXPORTER_OFFLINE_ENV.items():  # before any Prompt flow module is imported
    os.environ.setdefault(_name, _value)


def load() -> None:
    """Import Prompt flow's client (1.5 s on a small machine), e.g. while Prefect's API server starts, and pick
    the keyring backend that holds its connections' encryption key (what the first connection read does)."""
    import keyring
    import promptflow.client  # noqa: F401
    import promptflow.entities  # noqa: F401

    keyring.get_keyring()


def _client():
    """Prompt flow's client, with tracing and telemetry off before any of its modules can start them."""
    from promptflow._sdk._configuration import Configuration  # what `pf config set` writes to

    config = Configuration.get_instance()
    for key, value in OFFLINE_CONFIG.items():
        if config.get_config(key) != value:
            config.set_config(key, value)
    from promptflow.client import PFClient

    return PFClient()


def upsert_connection(name: str, endpoint: str, key: str | None, contract: str, owner: str) -> bool:
    """Create or update the tutorial's custom connection: `endpoint`, the scoring `contract` and the `owner`
    (the workspace it belongs to: one home's connections are shared by every workspace) in the clear, `key`
    as secret. With no key (a token-auth endpoint) the secret Prompt flow requires is the token's scope, which the
    chat flow's tool asks a token for. False, and nothing written, when it holds exactly that already (a re-run)."""
    from promptflow.entities import CustomConnection

    configs = {"endpoint": endpoint, "contract": contract, "owner": owner}
    secrets = {"key": key} if key is not None else {"token_scope": SCORING_TOKEN_SCOPE}
    connections = _client().connections
    current = connections.get(name, raise_error=False)  # decrypted: the key is compared, never shown
    if current is not None and dict(current.configs) == configs and dict(current.secrets) == secrets:
        return False
    connections.create_or_update(CustomConnection(name=name, configs=configs, secrets=secrets))
    return True


def _configs(name: str) -> dict | None:
    from promptflow.exceptions import UserErrorException

    try:
        return dict(_client().connections.get(name).configs)
    except UserErrorException:
        return None


def connection_endpoint(name: str) -> str | None:
    """The endpoint a connection points at, or None if there is no such connection."""
    return (_configs(name) or {}).get("endpoint")


def delete_connection(name: str, owner: str) -> str:
    """Delete the connection if it belongs to `owner` (one home's connections are shared by every workspace:
    another workspace's is kept). 'removed', 'gone' (there was none) or 'kept'."""
    configs = _configs(name)
    if configs is None:
        return "gone"
    if configs.get("owner") != owner:
        return "kept"
    _client().connections.delete(name)
    return "removed"


def prepare_flow(dest: Path, connection_name: str) -> Path:
    """Copy chat_flow/ to `dest` with its tool node bound to `connection_name`."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(CHAT_FLOW_DIR, dest,  # the flow, not this module that runs it
                    ignore=shutil.ignore_patterns(".promptflow", "__pycache__", Path(__file__).name))
    flow = yaml.safe_load((dest / FLOW_FILE).read_text(encoding="utf-8"))
    for node in flow["nodes"]:
        if node["name"] == TOOL_NODE:
            node["inputs"]["connection"] = connection_name
    (dest / FLOW_FILE).write_text(yaml.safe_dump(flow, sort_keys=False), encoding="utf-8")
    return dest


def run_chat_flow(flow_dir: Path, question: str, timeout_s: float) -> str:
    """Run the chat flow once with Prompt flow's client and return its answer, waiting at most `timeout_s`.

    The flow runs in a daemon thread that is left behind on time-out rather than interrupted: an
    exception injected into a running thread (how Prefect enforces task time-outs) can land while it
    holds a lock, such as logging's, and hang the process at exit."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["answer"] = str(_client().test(flow=str(flow_dir), inputs={"input_data": question})["answer"])
        except BaseException as error:  # handed to the waiting thread
            outcome["error"] = error

    worker = threading.Thread(target=run, name="smoke-chat", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise PipelineError(f"the chat flow gave no answer within {timeout_s:g} s (smoke_chat_timeout_s)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["answer"]
