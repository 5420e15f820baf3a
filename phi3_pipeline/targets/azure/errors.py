"""Azure errors as the stages need them: transient ones (the SDK's own retries exhausted) retried by the
task, permanent ones failing at once with what to do. Not-found is handled where it means something."""

from __future__ import annotations

import functools

import requests
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

from phi3_pipeline.config.errors import PipelineError, TransientError
from phi3_pipeline.stages import Stage

# The stage each target method serves, for the message of an unexpected failure.
STAGES = {
    "check_resources": Stage.QUOTA, "notices": Stage.QUOTA, "ensure_identity": Stage.IDENTITY,
    "store_dataset": Stage.DATASET, "find_or_submit_job": Stage.FINE_TUNE, "job_status": Stage.FINE_TUNE,
    "job_result": Stage.FINE_TUNE, "job_inputs": Stage.FINE_TUNE, "register_model": Stage.REGISTER,
    "deploy": Stage.DEPLOY, "live_deployment": Stage.LIVE_MODEL, "go_live": Stage.GO_LIVE,
    "remove_deployments": Stage.GO_LIVE, "create_connection": Stage.CONNECTION, "teardown": Stage.TEARDOWN,
    "sweep": Stage.TEARDOWN,
}

PERMISSION_HELP = ("the signed-in account needs Contributor and User Access Administrator (or Owner) on the "
                   "resource group; see 'Before the first run' in docs/azure.md")


def translated(method):
    """Turn an Azure SDK error escaping a target method into TransientError or PipelineError, and anything
    unexpected into a PipelineError naming the stage and where it ran (never a raw traceback)."""
    @functools.wraps(method)
    def wrapper(target, *args, **kwargs):
        try:
            return method(target, *args, **kwargs)
        except (PipelineError, TransientError):
            raise
        except (ServiceRequestError, ServiceResponseError, ConnectionError, TimeoutError,
                requests.RequestException) as error:
            raise TransientError(f"Azure did not answer: {error}") from None
        except HttpResponseError as error:
            status = error.status_code or 0
            if status in (408, 409, 429) or status >= 500:  # 409: busy (an operation in progress), retry later
                raise TransientError(f"Azure answered {status} after retries: {error.message}") from None
            advice = PERMISSION_HELP if status in (401, 403) else "fix the request or the setting it names"
            raise PipelineError(f"Azure refused the request ({status}): {error.message}; {advice}") from None
        except Exception as error:  # the cause stays chained for the flow's logs
            step = f"stage '{STAGES[method.__name__]}'" if method.__name__ in STAGES else method.__name__.strip("_")
            raise PipelineError(f"Azure {step} failed unexpectedly in {target.place}: "
                                f"{type(error).__name__}: {error}") from error
    return wrapper
