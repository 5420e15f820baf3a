"""The chat agent's front door in the pipeline's environment: it runs `agent_chat.py` in the agent's own
environment (Agent Framework and Prompt flow cannot share one: requirements.txt says why) and hands it the
deployment and its key through a pipe, never the command line or the environment."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

from phi3_pipeline.config.errors import ConfigError

AGENT_SCRIPT = Path(__file__).with_name("agent_chat.py")
REQUIREMENTS = Path(__file__).with_name("requirements.txt")


class AgentFailed(ConfigError):
    """The agent could not get an answer from the deployment (gone, refusing the key, not in its contract)."""


def install_command(env: Path) -> str:
    """The README's install command of the agent's environment."""
    return f"python3 -m venv {env} && {env}/bin/pip install -r {os.path.relpath(REQUIREMENTS)}"


def agent_python(env: Path) -> Path:
    python = env / "bin" / "python"
    if not python.is_file():
        raise ConfigError(f"the Agent Framework front end runs in its own environment, {env}, which does not exist: "
                          f"make it with `{install_command(env)}` (or set agent_env)")
    return python


def _config_pipe(config: dict) -> int:
    """A pipe already holding the config, closed for writing: the read end, for the agent to inherit."""
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w", encoding="utf-8") as pipe:  # far below a pipe's buffer: it never blocks
        json.dump(config, pipe)
    return read_end


def _agent(env: Path, config: dict, *flags: str, **run_options) -> subprocess.CompletedProcess:
    read_end = _config_pipe(config)
    try:
        return subprocess.run([str(agent_python(env)), str(AGENT_SCRIPT), "--config-fd", str(read_end), *flags],
                              pass_fds=(read_end,), check=False, **run_options)
    finally:
        os.close(read_end)


def config(scoring_uri: str, key: str, contract: str, deployment: str, timeout_s: float, streams: bool,
           question: str = "") -> dict:
    """`streams`: the deployment's server answers `stream: true` (else the agent asks for whole replies)."""
    return {"scoring_uri": scoring_uri, "key": key, "contract": contract, "deployment": deployment,
            "timeout_s": timeout_s, "streams": streams, "question": question}


def ask(env: Path, agent_config: dict, timeout_s: float) -> str:
    """One question through the agent; its answer. AgentFailed names the deployment, the contract and why."""
    try:
        done = _agent(env, agent_config, "--question", capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise AgentFailed(f"the agent got no answer from {agent_config['deployment']} within {timeout_s:g} s") \
            from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1].removeprefix("error: ") if lines else f"exit code {done.returncode}"
        raise AgentFailed(reason)
    return done.stdout.strip()


def chat(env: Path, agent_config: dict) -> int:
    """A conversation on this terminal through the agent (which reads and writes it directly); its exit code."""
    return _agent(env, agent_config).returncode


def web_chat(env: Path, agent_config: dict, port: int) -> int:
    """The agent as a web chat on http://127.0.0.1:`port` (DevUI) until Ctrl-C; its exit code. The page asks for
    a sign-in token, made here for this chat and shown on this terminal only."""
    sign_in_token = secrets.token_urlsafe(24)
    print(f"web chat: http://127.0.0.1:{port} (sign-in token: {sign_in_token}); Ctrl-C ends it", flush=True)
    return _agent(env, {**agent_config, "ui_token": sign_in_token}, "--ui", str(port)).returncode
