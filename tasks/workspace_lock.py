"""One run per workspace: a flow holds its workspace's run lock from start to end, and with it what keeps runs
on other machines off: the workspace's slot on a shared Prefect server (tasks/workspace_slot.py) and the
target's own lease (on Azure, a blob lease in the workspace's storage)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import ExitStack

from prefect import get_run_logger
from prefect.context import FlowRunContext

from phi3_pipeline.config.settings import SETTINGS_WHERE_IT_RUNS, PipelineSettings
from phi3_pipeline.locks import WorkspaceBusyError, run_lock
from tasks.run_target import stage_target
from tasks.workspace_slot import on_a_shared_server, workspace_slot


def settings_of_this_run(given: PipelineSettings | dict, from_a_deployment: bool) -> PipelineSettings:
    """A run from a deployment (the UI, a schedule, `prefect deployment run`) takes phi3-pipeline.toml and
    PHI3_* where it runs, overridden by each parameter that differs from its default: the UI's Custom run form
    sends every field, the defaults included, and those must not hide the worker's configuration. A run
    started in this process (the command line) takes its settings as given."""
    if not isinstance(given, PipelineSettings):
        return PipelineSettings(**given)
    if from_a_deployment:
        return PipelineSettings(**given.model_dump(exclude_defaults=True))
    return given


def _from_a_deployment() -> bool:
    """Whether this flow run was made from a deployment, as its context says (`prefect.runtime.deployment.id`
    asks the API for the flow run again: 50 ms of a warm re-run)."""
    run = FlowRunContext.get()
    return run is not None and run.flow_run is not None and run.flow_run.deployment_id is not None


def one_run_per_workspace(makes_workspace: bool, when_busy: Callable[..., object] | None = None):
    """Decorate a flow so it holds its workspace's run lock, its Prefect slot and its lease from start to end (a
    second run waits, naming the holder, or with `wait` off fails at once) and removes its own scratch folder when
    it ends. A plan only reads and takes none of them; without `makes_workspace` a workspace that does not exist
    is not made. `when_busy`, given the flow's arguments, returns what the flow returns, instead of waiting, when
    another run holds the workspace: a report whose `skipped` says why (None: wait as usual)."""
    def decorate(flow_function):
        @functools.wraps(flow_function)
        def holding_the_workspace(settings: PipelineSettings = SETTINGS_WHERE_IT_RUNS, *args, **kwargs):
            settings = settings_of_this_run(settings, from_a_deployment=_from_a_deployment())
            target = stage_target(settings)
            lock_file = None if settings.plan else target.run_lock_file(create=makes_workspace)
            logger = get_run_logger()
            skipped = when_busy(settings, *args, **kwargs) if when_busy else None
            try:
                if lock_file is None:
                    return flow_function(settings, *args, **kwargs)
                wait = settings.wait and skipped is None

                def waiting(holder: str) -> None:
                    logger.info("another run holds this workspace (%s): waiting", holder)

                with ExitStack() as held:
                    try:
                        taken_now = held.enter_context(run_lock(lock_file, wait, waiting))
                        if taken_now:  # the run's outermost flow: a subflow holds these through its parent
                            if on_a_shared_server():
                                held.enter_context(workspace_slot(target.workspace_key,
                                                                  FlowRunContext.get().flow_run.id, wait, waiting))
                            held.enter_context(target.workspace_lease(wait, waiting, logger.warning))
                    except WorkspaceBusyError as busy:
                        if skipped is None:
                            raise
                        logger.info("%s (%s)", skipped.skipped, busy)
                        return skipped
                    if taken_now:  # no other run of this workspace is active: what killed runs left can go
                        target.remove_scratch(others_too=True)
                    return flow_function(settings, *args, **kwargs)
            finally:
                target.remove_scratch()
        return holding_the_workspace
    return decorate
