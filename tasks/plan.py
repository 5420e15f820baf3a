"""The dry run as a stage, for a plan asked for from the Prefect UI (`plan` in the form): read calls only."""

from prefect import task
from prefect.artifacts import create_table_artifact

from phi3_pipeline.config.settings import PipelineSettings
from phi3_pipeline.targets import plan_run
from phi3_pipeline.targets.base import PlanItem


@task(name="plan")
def dry_run(settings: PipelineSettings) -> list[PlanItem]:
    items = plan_run(settings)
    create_table_artifact(key="plan", table=[item.model_dump() for item in items],
                          description="what a run would create or reuse, and USD per hour while it runs")
    return items
