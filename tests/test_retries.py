"""Stage tasks retry only what may pass on its own; a permanent error fails at once."""

import pytest
import requests
from prefect.states import Failed
from prefect.task_engine import TaskRunTimeoutError

from phi3_pipeline.config.errors import ConfigError, DatasetError, InsufficientResourcesError, JobFailedError, TransientError
from tasks.retries import is_transient


@pytest.mark.parametrize("error", [TransientError("server starting"), requests.ConnectionError("reset"),
                                   requests.Timeout("slow"), ConnectionResetError("reset"), TimeoutError()])
def test_transient_errors_are_retried(error):
    assert is_transient(None, None, Failed(data=error))


@pytest.mark.parametrize("error", [ConfigError("bad"), DatasetError("line 3"), InsufficientResourcesError("ram"),
                                   JobFailedError("diverged"), ValueError("bug"),
                                   TaskRunTimeoutError("stage past its time limit")])
def test_permanent_errors_fail_at_once(error):
    assert not is_transient(None, None, Failed(data=error))
