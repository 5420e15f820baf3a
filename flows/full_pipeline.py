"""Fine-tune, deploy and wire up a custom Phi model, stage by stage as in the tutorial.

    python -m flows.full_pipeline [--help] [--plan] [--teardown] [--training.epochs 4 ...]
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger

from phi3_pipeline.config.settings import SETTINGS_WHERE_IT_RUNS, PipelineSettings
from phi3_pipeline.stages import Stage
from flows.teardown import teardown
from tasks.connection import create_connection
from tasks.dataset import prepare_dataset
from tasks.deploy import deploy, go_live
from tasks.evaluate import evaluation_gate
from tasks.finetune import fine_tune
from tasks.identity import ensure_identity
from tasks.live_model import find_live_model
from tasks.plan import dry_run
from tasks.quota import check_quota
from tasks.register import register_model
from tasks.smoke_chat import smoke_chat
from tasks.stages import StageSummary
from tasks.summary import publish_failure_notice, publish_summary
from tasks.teardown import clean_up_after_failure
from tasks.workspace_lock import one_run_per_workspace


@flow(name="phi3-full-pipeline")
@one_run_per_workspace(makes_workspace=True)
def full_pipeline(settings: PipelineSettings = SETTINGS_WHERE_IT_RUNS) -> dict:
    """Live model -> quota (on Azure: the catalog model too) -> identity -> dataset -> fine-tune -> register ->
    deploy beside the live one -> evaluation gate -> go live (100 % traffic) -> connection -> smoke chat.
    One run per workspace at a time."""
    stages = StageSummary()
    if settings.plan:  # a dry run asked for from the UI: read calls only, nothing is created
        return {"plan": [item.model_dump() for item in dry_run(settings)], "stages": stages.rows()}
    live = None
    try:
        live = stages.run(Stage.LIVE_MODEL, find_live_model, settings)
        if settings.skip_unchanged and live.unchanged:
            get_run_logger().info("nothing to retrain: %s", live.label)
            return {"unchanged": live.label, "job": live.planned_job, "stages": stages.rows()}
        stages.run(Stage.QUOTA, check_quota, settings)
        stages.run(Stage.IDENTITY, ensure_identity, settings)
        dataset = stages.run(Stage.DATASET, prepare_dataset, settings)
        job = stages.run(Stage.FINE_TUNE, fine_tune, settings, dataset)
        model = stages.run(Stage.REGISTER, register_model, settings, job, dataset)
        candidate = stages.run(Stage.DEPLOY, deploy, settings, model)
        stages.run(Stage.GATE, evaluation_gate, settings, candidate, live.deployment)
        deployment = stages.run(Stage.GO_LIVE, go_live, settings, candidate)
        connection = stages.run(Stage.CONNECTION, create_connection, settings, deployment)
        answer = stages.run(Stage.SMOKE_CHAT, smoke_chat, settings, connection, deployment)
        if settings.teardown:
            stages.run(Stage.TEARDOWN, teardown, settings)
    except BaseException as error:
        _after_failure(settings, stages, live, error)
        raise
    finally:
        publish_summary(stages)
    return {"answer": answer.text, "model_version": model.version, "job": job.name, "stages": stages.rows()}


def _after_failure(settings: PipelineSettings, stages: StageSummary, live, error: BaseException) -> None:
    """Never leave by accident what this run started; say what failed and what still runs."""
    live_before = live.deployment if live else None
    removed, still_serving, clean_up_error = [], live_before.deployment_name if live_before else None, None
    if stages.candidate_deployed and not stages.torn_down:
        state = clean_up_after_failure(settings, live_before, stages.traffic_moved, return_state=True)
        if state.is_completed():  # a clean-up failure must not hide the original error
            removed, still_serving = state.result().removed, state.result().still_serving
        else:
            clean_up_error = state.result(raise_on_failure=False)
    publish_failure_notice(stages, error, still_serving, removed, clean_up_error)


if __name__ == "__main__":
    from phi3_pipeline.cli.commands import finish, run_pipeline_cli

    finish(run_pipeline_cli(sys.argv[1:], full_pipeline))
