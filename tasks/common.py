"""What every stage task shares: transient-only retries, the target it works on, its cache key, and the
workspace's run lock around a flow."""

from __future__ import annotations

import functools

import requests
from prefect import get_run_logger
from prefect.runtime import flow_run
from prefect.states import State
from prefect.task_engine import TaskRunTimeoutError

from pipeline.config import SETTINGS_WHERE_IT_RUNS, PipelineSettings
from pipeline.errors import TransientError
from pipeline.naming import content_hash
from pipeline.run_lock import run_lock
from targets import get_target
from targets.base import Target

TRANSIENT_ERRORS = (TransientError, ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout)
RETRY_POLICY = {"retries": 3, "retry_delay_seconds": [2, 8, 30], "retry_jitter_factor": 0.5}


def is_transient(task, task_run, state: State) -> bool:
    """Retry condition: only errors that may pass on their own; a PipelineError fails at once, and so
    does a task past its own time limit (the limit bounds the stage, retries included)."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, TRANSIENT_ERRORS) and not isinstance(error, TaskRunTimeoutError)


def stage_target(settings: PipelineSettings) -> Target:
    """The target a stage works on; what it creates is tagged with this flow run's id."""
    return get_target(settings, run_id=str(flow_run.id or "cli"))


def stage_cache_key(stage: str, target: Target, inputs: dict) -> str:
    """A cached stage's key: what the stage is made of, and the workspace it ran in (asked of the target)."""
    return f"{stage}-" + content_hash({**inputs, "workspace": target.workspace_identity()})


def one_run_per_workspace(makes_workspace: bool):
    """Decorate a flow so it holds its workspace's run lock from start to end (a second run waits, naming the
    holder, or with `wait` off fails at once) and removes its own scratch folder when it ends. A plan only
    reads and takes no lock; without `makes_workspace` a workspace that does not exist is not made."""
    def decorate(flow_function):
        @functools.wraps(flow_function)
        def holding_the_workspace(settings: PipelineSettings = SETTINGS_WHERE_IT_RUNS, *args, **kwargs):
            settings = settings if isinstance(settings, PipelineSettings) else PipelineSettings(**settings)
            target = stage_target(settings)
            lock_file = None if settings.plan else target.run_lock_file(create=makes_workspace)
            logger = get_run_logger()
            try:
                if lock_file is None:
                    return flow_function(settings, *args, **kwargs)
                with run_lock(lock_file, settings.wait, lambda holder: logger.info(
                        "another run holds this workspace (%s): waiting", holder)) as taken_now:
                    if taken_now:  # no other run of this workspace is active: what killed runs left can go
                        target.remove_scratch(others_too=True)
                    return flow_function(settings, *args, **kwargs)
            finally:
                target.remove_scratch()
        return holding_the_workspace
    return decorate


def stage_retries() -> dict:
    return {**RETRY_POLICY, "retry_condition_fn": is_transient}
