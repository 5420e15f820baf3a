"""Fine-tune, deploy and wire up a custom Phi-3 model, stage by stage as in the tutorial.

    python -m flows.full_pipeline [--help] [--teardown] [--training.epochs 4 ...]
"""

from __future__ import annotations

import sys

from prefect import flow

from flows.teardown import teardown
from pipeline.config import PipelineSettings
from tasks.common import StageSummary
from tasks.connection import create_connection
from tasks.dataset import prepare_dataset
from tasks.deploy import deploy
from tasks.finetune import fine_tune
from tasks.identity import ensure_identity
from tasks.quota import check_quota
from tasks.register import register_model
from tasks.smoke_chat import smoke_chat
from tasks.summary import publish_summary


@flow(name="phi3-full-pipeline")
def full_pipeline(settings: PipelineSettings | None = None) -> dict:
    """Identity -> quota -> dataset -> fine-tune -> register -> deploy -> connection -> smoke chat."""
    settings = settings or PipelineSettings()
    stages = StageSummary()
    try:
        identity = stages.run("identity and RBAC", ensure_identity, settings)
        stages.run("quota check", check_quota, settings)
        dataset = stages.run("dataset", prepare_dataset, settings, identity)
        job = stages.run("fine-tune", fine_tune, settings, dataset, identity.workspace_id)
        model = stages.run("register", register_model, settings, job, dataset, identity.workspace_id)
        deployment = stages.run("deploy", deploy, settings, model)
        connection = stages.run("connection", create_connection, settings, deployment)
        answer = stages.run("smoke chat", smoke_chat.with_options(timeout_seconds=settings.smoke_chat_timeout_s),
                            settings, connection)
        if settings.teardown:
            stages.run("teardown", teardown, settings)
    except BaseException:
        if stages.reached("deploy") and not stages.reached("teardown"):  # never leave a server running
            teardown(settings, return_state=True)  # a teardown failure must not hide the original error
        raise
    finally:
        publish_summary(stages)
    return {"answer": answer, "model_version": model.version, "job": job.name, "stages": stages.rows()}


if __name__ == "__main__":
    from flows.cli import run_pipeline_cli

    sys.exit(run_pipeline_cli(sys.argv[1:]))
