"""Every deployment of `prefect.yaml` from one long-running process, with Prefect's `serve()`: the UI's
runs, the retraining schedule, teardown and the reaper on one machine, without a work pool or a worker.

    python -m deployments.serve        # with PREFECT_API_URL set; Ctrl-C (or SIGTERM) stops it

On the way out it pauses the four deployments' schedules, as Prefect's own shutdown would, but within
PAUSE_WITHIN_S: Prefect's shutdown retries for minutes against a server that has gone, and the process must stop.

`prefect.yaml` is the one definition: names, descriptions, tags, parameters and schedules are read from it
here, so the two ways cannot drift apart (`prefect deploy --all` and a process worker remain the way for
more than one machine).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from prefect import serve
from prefect.client.orchestration import get_client
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


PAUSE_WITHIN_S = 5


def pause_schedules(deployments: list[RunnerDeployment]) -> None:
    """Pause the deployments' schedules (no run is scheduled for a process that is gone), giving up after
    PAUSE_WITHIN_S with one line on standard error."""
    async def pause() -> None:
        async with get_client() as client:
            for deployment in deployments:
                found = await client.read_deployment_by_name(f"{deployment.flow_name}/{deployment.name}")
                await client.pause_deployment(found.id)

    try:
        asyncio.run(asyncio.wait_for(pause(), PAUSE_WITHIN_S))
    except Exception as error:  # noqa: BLE001 - the server is gone or refuses: stopping goes on regardless
        print(f"warning: the deployments' schedules could not be paused within {PAUSE_WITHIN_S} s "
              f"({type(error).__name__}); pause them in the UI if no process serves them", file=sys.stderr)


def main() -> None:
    deployments = runner_deployments()
    try:
        serve(*deployments, pause_on_shutdown=False)
    except KeyboardInterrupt:
        pass  # Ctrl-C: stop as SIGTERM does
    finally:
        pause_schedules(deployments)


if __name__ == "__main__":
    main()
