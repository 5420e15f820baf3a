"""Run artifacts from the flow: the stage table, the loss curve (also on a cached re-run), the failure notice."""

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from phi3_pipeline.stages import Stage
from phi3_pipeline.targets.base import JobRef
from tasks.stages import StageSummary


def loss_curve_markdown(job: JobRef) -> str:
    rows = "\n".join(f"| {step} | {loss:.4f} |" for step, loss in job.loss_curve)
    metrics = "\n".join(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
                        for key, value in job.metrics.items())
    return (f"# Fine-tune {job.name}\n\n## Metrics\n| metric | value |\n|---|---|\n{metrics}\n\n"
            f"## Training loss\n| step | loss |\n|---|---|\n{rows}\n")


def publish_summary(stages: StageSummary) -> None:
    create_table_artifact(key="run-summary", table=stages.rows(), description="stages of this pipeline run")
    job = stages.results.get(Stage.FINE_TUNE)
    if isinstance(job, JobRef):
        create_markdown_artifact(key="loss-curve", markdown=loss_curve_markdown(job),
                                 description="fine-tune loss per step")


def publish_failure_notice(stages: StageSummary, error: BaseException, still_serving: str | None,
                           removed: list[str], clean_up_error: BaseException | None = None) -> str:
    """A notice on the failed run (Artifacts tab) and in its log: which stage failed, what was cleaned up,
    and whether a paid deployment is still running."""
    failed = stages.failed_stage or "before the first stage"
    if clean_up_error is not None:
        running = (f"**The clean-up failed ({type(clean_up_error).__name__}: {clean_up_error}): the endpoint and "
                   "its deployments may still be running and billing. Run the teardown flow.**")
    elif still_serving:
        running = (f"**Still running: deployment {still_serving}** (it served before this run or passed its "
                   "gate; stop it with the teardown flow)")
    else:
        running = "Nothing is left running."
    notice = (f"# Pipeline failed at stage: {failed}\n\n{type(error).__name__}: {error}\n\n"
              f"Cleaned up: {', '.join(removed) or 'nothing'}.\n\n{running}\n")
    create_markdown_artifact(key="failure-notice", markdown=notice, description="why this run failed")
    get_run_logger().error(notice)
    return notice
