"""Every deployment of `prefect.yaml` from one long-running process, with Prefect's `serve()`: the UI's
runs, the retraining schedule, teardown and the reaper on one machine, without a work pool or a worker.

    python -m deployments.serve        # with PREFECT_API_URL set; Ctrl-C stops it

`prefect.yaml` is the one definition: names, descriptions, tags, parameters and schedules are read from it
here, so the two ways cannot drift apart (`prefect deploy --all` and a process worker remain the way for
more than one machine).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml
from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"


def definitions(path: Path = PREFECT_YAML) -> list[dict]:
    """The deployments as `prefect.yaml` declares them."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))["deployments"]


def _flow(entrypoint: str):
    """`flows/full_pipeline.py:full_pipeline` -> the flow object, imported as a module (once)."""
    file, name = entrypoint.split(":")
    return getattr(importlib.import_module(file.removesuffix(".py").replace("/", ".")), name)


def runner_deployments(path: Path = PREFECT_YAML) -> list[RunnerDeployment]:
    return [_flow(spec["entrypoint"]).to_deployment(
        name=spec["name"], description=spec.get("description"), tags=spec.get("tags", []),
        parameters=spec.get("parameters", {}),
        schedules=[Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True))
                   for s in spec.get("schedules", [])],
    ) for spec in definitions(path)]


if __name__ == "__main__":
    serve(*runner_deployments())
