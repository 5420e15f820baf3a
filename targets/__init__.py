"""Where the stages run. `get_target` is the one place that knows the implementations."""

from __future__ import annotations

from pipeline.config import PipelineSettings
from pipeline.errors import ConfigError
from targets.base import Target


def get_target(settings: PipelineSettings) -> Target:
    if settings.target == "local":
        from targets.local.target import LocalTarget

        return LocalTarget(settings)
    raise ConfigError(
        "target=azure is not available in this release: the Azure implementation of the stage "
        "interface (targets/base.py) is still being built. Use target=local."
    )
