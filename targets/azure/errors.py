"""Azure errors as the stages need them: transient ones (the SDK's own retries exhausted) retried by the
task, permanent ones failing at once with what to do. Not-found is handled where it means something."""

from __future__ import annotations

import functools

import requests
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

from config.errors import PipelineError, TransientError

# The stage each target method serves, for the message of an unexpected failure.
STAGES = {
    "check_resources": "quota check", "notices": "quota check", "ensure_identity": "identity and RBAC",
    "store_dataset": "dataset", "find_or_submit_job": "fine-tune", "job_status": "fine-tune",
    "job_result": "fine-tune", "job_inputs": "fine-tune", "register_model": "register", "deploy": "deploy",
    "live_deployment": "live model", "_endpoint_key": "endpoint key", "go_live": "go live",
    "remove_deployments": "go live", "create_connection": "connection", "plan": "plan", "teardown": "teardown",
    "sweep": "teardown",
}

PERMISSION_HELP = ("the signed-in account needs Contributor and User Access Administrator (or Owner) on the "
                   "resource group; see the README's Azure section")


def translated(method):
    """Turn an Azure SDK error escaping a target method into TransientError or PipelineError, and anything
    unexpected into a PipelineError naming the stage and the workspace (never a raw traceback)."""
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
            if status in (408, 429) or status >= 500:
                raise TransientError(f"Azure answered {status} after retries: {error.message}") from None
            advice = PERMISSION_HELP if status in (401, 403) else "fix the request or the setting it names"
            raise PipelineError(f"Azure refused the request ({status}): {error.message}; {advice}") from None
        except Exception as error:  # the cause stays chained for the flow's logs
            azure = target.azure
            raise PipelineError(f"Azure stage '{STAGES.get(method.__name__, method.__name__)}' failed unexpectedly "
                                f"in workspace {azure.workspace_name} (resource group {azure.resource_group}): "
                                f"{type(error).__name__}: {error}") from error
    return wrapper
