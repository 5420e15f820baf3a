"""Stage 3: dataset: load the slice, split it with the seed, validate, write and store the JSONL files."""

from prefect import get_run_logger, task

from phi3_pipeline.chat_data.split_files import source_fingerprint, split_once
from phi3_pipeline.config.settings import PipelineSettings
from phi3_pipeline.stages import Stage
from phi3_pipeline.targets.base import DatasetRef
from tasks.retries import stage_retries
from tasks.run_target import stage_cache_key, stage_target


def dataset_cache_key(context, parameters) -> str:
    """Same settings, same source content (its files, or the hub's revision), same workspace: reused."""
    settings: PipelineSettings = parameters["settings"]
    return stage_cache_key("dataset", stage_target(settings), {"settings": settings.dataset.model_dump(),
                                                              "source": source_fingerprint(settings.dataset)})


@task(name=Stage.DATASET.task_name, cache_key_fn=dataset_cache_key, **stage_retries())
def prepare_dataset(settings: PipelineSettings) -> DatasetRef:
    target = stage_target(settings)
    split = split_once(settings.dataset, target.local_root())
    dataset = target.store_dataset(split)
    get_run_logger().info(
        "dataset %s: %d train / %d test records (%s)", dataset.content_hash[:12], dataset.train_rows,
        dataset.test_rows, "stored" if dataset.created else "already stored",
    )
    return dataset
