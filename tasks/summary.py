"""Run artifacts from the flow: the stage table and the loss curve (also on a cached re-run)."""

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from targets.base import JobRef
from tasks.common import StageSummary


def loss_curve_markdown(job: JobRef) -> str:
    rows = "\n".join(f"| {step} | {loss:.4f} |" for step, loss in job.loss_curve)
    metrics = "\n".join(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
                        for key, value in job.metrics.items())
    return (f"# Fine-tune {job.name}\n\n## Metrics\n| metric | value |\n|---|---|\n{metrics}\n\n"
            f"## Training loss\n| step | loss |\n|---|---|\n{rows}\n")


def publish_summary(stages: StageSummary) -> None:
    create_table_artifact(key="run-summary", table=stages.rows(), description="stages of this pipeline run")
    job = stages.results.get("fine-tune")
    if isinstance(job, JobRef):
        create_markdown_artifact(key="loss-curve", markdown=loss_curve_markdown(job),
                                 description="fine-tune loss per step")
