"""The run summary artifact: one row per stage, what it created or reused and how long it took."""

from prefect.artifacts import create_table_artifact

from tasks.common import StageSummary


def publish_summary(stages: StageSummary) -> None:
    create_table_artifact(key="run-summary", table=stages.rows(), description="stages of this pipeline run")
