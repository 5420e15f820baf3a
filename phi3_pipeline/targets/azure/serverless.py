"""Serverless mode on Azure: where Microsoft offers serverless fine-tuning, and the serverless endpoints that serve
the fine-tuned models (one per model version: a serverless endpoint has no traffic split).

What is known, and from where (checked 2026-12-02):
- regions: azure-ai-docs `articles/ai-foundry/includes/region-availability-maas.md` (ms.date 2025-11-24), row
  "Phi-4 / Phi-4-mini-instruct / Phi-4-multimodal-instruct": fine-tuning in the six regions below, deployment of
  the fine-tuned model there and in swedencentral. The service refuses other regions at submit time; recorded
  (azure-sdk-assets d0dbcead, 2026-03-04): HTTP 400 "Meta-Llama-3-8B : Serverless FineTuning not supported in
  westus." (inner error ModelNotSupportedByMaaS);
- workspace: a hub-based project ("You must use a hub based project for this feature", deploy-models-serverless-
  availability), which is what the pipeline's own Foundry project is;
- prices: none published as figures; `fine-tune-serverless.md` (ms.date 2026-01-28) points to the deployment
  wizard's "Pricing and terms" tab and says every deployed fine-tuned model bills an hourly hosting fee.
"""

from __future__ import annotations

from datetime import UTC, datetime

from azure.ai.ml import MLClient
from azure.ai.ml.entities import ServerlessEndpoint
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from phi3_pipeline.targets.azure.clients import found, when_not_busy
from phi3_pipeline.targets.azure.entities import LIVE_SINCE, live_now, made_here, serverless_endpoint
from phi3_pipeline.targets.azure.online import removable, succeeded, tag_time

OFFER_SOURCE = ("azure-ai-docs articles/ai-foundry/includes/region-availability-maas.md, ms.date 2025-11-24, "
                "checked 2026-12-02")
FINETUNE_REGIONS: dict[str, tuple[str, ...]] = dict.fromkeys(
    ("phi-4", "phi-4-mini-instruct", "phi-4-multimodal-instruct"),
    ("eastus2", "eastus", "northcentralus", "southcentralus", "westus", "westus3"))
# USD list prices by model (lower-case name): (training per 1M tokens, hosting per hour). None: not published.
PRICES_AS_OF = "2026-12-02"
PRICE_SOURCE = ("fine-tune-serverless.md, ms.date 2026-01-28: prices only in the deployment wizard's "
                "'Pricing and terms' tab")
PRICES_USD: dict[str, tuple[float | None, float | None]] = {}
REFUSED_REGION = "Serverless FineTuning not supported"  # the service's own words (see above)
VERSION_SEPARATOR = "-v"  # <the model's endpoint prefix>-v<model version>


def offer_refusal(model_name: str, region: str) -> str | None:
    """Why the model cannot be fine-tuned serverless in the region (None: it can), from the dated table."""
    regions = FINETUNE_REGIONS.get(model_name.lower())
    if regions is None:
        offered = ", ".join(sorted({name for name in FINETUNE_REGIONS}))
        return (f"{model_name} is not offered for serverless fine-tuning (offered: {offered}; {OFFER_SOURCE}): set "
                "azure.base_model to one of them, or azure.mode=managed")
    if region.lower() not in regions:
        return (f"serverless fine-tuning of {model_name} is not offered in {region}; it is in "
                f"{', '.join(regions)} ({OFFER_SOURCE}): set azure.location to one of them (the Foundry project "
                "is made there), or azure.mode=managed")
    return None


def region_refused(error: HttpResponseError) -> bool:
    """The service's refusal of a serverless fine-tune in the workspace's region (HTTP 400, its own words)."""
    return error.status_code == 400 and REFUSED_REGION.lower() in str(error.message or error).lower()


def prices(model_name: str) -> tuple[float | None, float | None]:
    """(training USD per 1M tokens, hosting USD per hour) of the model; None where no price is known."""
    return PRICES_USD.get(model_name.lower(), (None, None))


def endpoint_name(prefix: str, version: int) -> str:
    return f"{prefix}{VERSION_SEPARATOR}{version}"


def prefix_of(name: str) -> str:
    """The model's endpoint prefix an endpoint name carries (`endpoint_name`'s inverse)."""
    return name.rsplit(VERSION_SEPARATOR, 1)[0]


def endpoints(ml_client: MLClient, prefix: str | None = None) -> list[ServerlessEndpoint]:
    """The serverless endpoints this project made in the workspace (with `prefix`, one model's versions); none
    when the workspace does not exist yet."""
    try:
        listed = list(ml_client.serverless_endpoints.list())
    except ResourceNotFoundError:
        return []
    return [e for e in listed if made_here(e.tags) and (prefix is None or prefix_of(e.name) == prefix)]


def live(candidates: list[ServerlessEndpoint]) -> ServerlessEndpoint | None:
    """The one serving: the latest to go live (the record is its `live-since` tag)."""
    stamped = [(tag_time((e.tags or {}).get(LIVE_SINCE)), e) for e in candidates]
    stamped = [(since, e) for since, e in stamped if since is not None]
    return max(stamped, key=lambda pair: pair[0])[1] if stamped else None


def newer_live(endpoint: ServerlessEndpoint, than: str) -> bool:
    """Whether the endpoint went live after the time `than` (ISO 8601; empty: any live one is newer)."""
    since, other = tag_time((endpoint.tags or {}).get(LIVE_SINCE)), tag_time(than)
    return since is not None and (other is None or since > other)


def ensure_endpoint(ml_client: MLClient, name: str, model_id: str, location: str, tags: dict[str, str],
                    claim: bool) -> tuple[ServerlessEndpoint, bool]:
    """The model version's endpoint if it provisioned (with `claim`, re-tagged as this run's candidate); else
    create it and wait for the service's long-running operation. (endpoint, created)."""
    operations = ml_client.serverless_endpoints
    try:
        existing = operations.get(name)
        if succeeded(existing):
            if claim and (existing.tags or {}).get("pipeline-run") != tags["pipeline-run"]:
                existing = retag(ml_client, existing, {**(existing.tags or {}), **tags})
            return existing, False
    except ResourceNotFoundError:
        pass
    return operations.begin_create_or_update(serverless_endpoint(name, model_id, location, tags)).result(), True


def retag(ml_client: MLClient, endpoint: ServerlessEndpoint, tags: dict[str, str]) -> ServerlessEndpoint:
    """The endpoint with new tags (the same model: nothing is redeployed)."""
    return ml_client.serverless_endpoints.begin_create_or_update(serverless_endpoint(
        endpoint.name, endpoint.model_id, endpoint.location, tags)).result()


def mark_live(ml_client: MLClient, endpoint: ServerlessEndpoint, now: datetime | None = None) -> ServerlessEndpoint:
    """Record that this endpoint now serves: its `live-since` tag, set now."""
    return retag(ml_client, endpoint, live_now(endpoint.tags, now or datetime.now(UTC)))


def delete(ml_client: MLClient, name: str) -> bool:
    """Delete the endpoint (what bills by the hour); False if it was already gone (retried while busy)."""
    operations = ml_client.serverless_endpoints
    return when_not_busy(f"serverless endpoint {name}", lambda: found(lambda: (
        operations.get(name), operations.begin_delete(name).result())))


def remove_others(ml_client: MLClient, candidates: list[ServerlessEndpoint], keep: str | None, run_id: str,
                  only_own: bool = False, superseded: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """Delete a model's endpoints other than `keep`, by the rule managed deployments go by (`online.removable`);
    (removed, kept)."""
    removed, kept = [], []
    for endpoint in candidates:
        if endpoint.name == keep:
            continue
        if removable(endpoint, run_id, only_own, superseded):
            delete(ml_client, endpoint.name)
            removed.append(endpoint.name)
        else:
            kept.append(endpoint.name)
    return removed, kept


def key(ml_client: MLClient, name: str) -> str:
    return ml_client.serverless_endpoints.get_keys(name).primary_key
