"""Every deployment of `prefect.yaml` from one long-running process, with Prefect's `serve()`: the UI's
runs, the retraining schedule, teardown and the reaper on one machine, without a work pool or a worker.

    python -m deployments.serve        # with PREFECT_API_URL set; Ctrl-C stops it

`prefect.yaml` is the one definition: names, descriptions, tags, parameters and schedules are read from it
here, so the two ways cannot drift apart (`prefect deploy --all` and a process worker remain the way for
more than one machine).
"""

from __future__ import annotations

from pathlib import Path

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from phi3_pipeline.project import PREFECT_YAML, deployment_definitions, load_flow


def runner_deployments(path: Path = PREFECT_YAML) -> list[RunnerDeployment]:
    return [load_flow(spec["name"], path).to_deployment(
        name=spec["name"], description=spec.get("description"), tags=spec.get("tags", []),
        parameters=spec.get("parameters", {}),
        schedules=[Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True))
                   for s in spec.get("schedules", [])],
    ) for spec in deployment_definitions(path)]


if __name__ == "__main__":
    serve(*runner_deployments())
