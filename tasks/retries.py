"""Stage retries: only errors that may pass on their own are retried, with backoff and jitter."""

from __future__ import annotations

import requests
from prefect.states import State
from prefect.task_engine import TaskRunTimeoutError

from phi3_pipeline.config.errors import TransientError

TRANSIENT_ERRORS = (TransientError, ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout)
RETRY_POLICY = {"retries": 3, "retry_delay_seconds": [2, 8, 30], "retry_jitter_factor": 0.5}


def is_transient(task, task_run, state: State) -> bool:
    """Retry condition: only errors that may pass on their own; a PipelineError fails at once, and so
    does a task past its own time limit (the limit bounds the stage, retries included)."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, TRANSIENT_ERRORS) and not isinstance(error, TaskRunTimeoutError)


def stage_retries() -> dict:
    return {**RETRY_POLICY, "retry_condition_fn": is_transient}
