"""The project folder this package sits in, and its flows as `prefect.yaml` names them.

The flows (`flows/`) and their tasks (`tasks/`) are not installed: they run from the project folder, as a
Prefect worker runs them (prefect.yaml's pull step). The command line and the served deployments load them
by the entrypoints that prefect.yaml gives its deployments.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

PROJECT_DIR = Path(__file__).resolve().parents[1]
PREFECT_YAML = PROJECT_DIR / "prefect.yaml"


def deployment_definitions(path: Path = PREFECT_YAML) -> list[dict]:
    """The deployments as `prefect.yaml` declares them."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))["deployments"]


def load_flow(deployment: str, path: Path = PREFECT_YAML):
    """The flow of the deployment named `deployment`, loaded from its entrypoint in the project folder."""
    from prefect.flows import load_flow_from_entrypoint

    entrypoint = next(spec["entrypoint"] for spec in deployment_definitions(path) if spec["name"] == deployment)
    if str(path.parent) not in sys.path:  # the flow's own imports (tasks, flows) come from the project folder
        sys.path.insert(0, str(path.parent))
    return load_flow_from_entrypoint(str(path.parent / entrypoint))
