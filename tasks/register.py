"""Stage 5: register the job's output as a versioned MLflow model, with lineage."""

from prefect import get_run_logger, task

from phi3_pipeline.config.settings import PipelineSettings
from phi3_pipeline.stages import Stage
from phi3_pipeline.targets.base import DatasetRef, JobRef, ModelRef
from tasks.retries import stage_retries
from tasks.run_target import stage_cache_key, stage_target


def register_cache_key(context, parameters) -> str:
    """One model version per job and model name in a workspace."""
    settings: PipelineSettings = parameters["settings"]
    return stage_cache_key("register", stage_target(settings),
                           {"job": parameters["job"].name, "model": settings.model_name})


@task(name=Stage.REGISTER.task_name, cache_key_fn=register_cache_key, **stage_retries())
def register_model(settings: PipelineSettings, job: JobRef, dataset: DatasetRef) -> ModelRef:
    model = stage_target(settings).register_model(job, dataset)
    get_run_logger().info("model %s version %d (%s) from job %s", model.name, model.version,
                          "registered" if model.created else "already registered", job.name)
    return model
