"""An azure-core HTTP transport that answers from scripted JSON, so the real SDK clients run offline."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from urllib.parse import unquote

from azure.ai.ml import MLClient
from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest._http_response_impl import HttpResponseImpl
from azure.core.utils import CaseInsensitiveDict

from phi3_pipeline.config.settings import AzureSettings
from phi3_pipeline.targets.azure.serverless import FINETUNE_REGIONS
from tests.conftest import served_in_a_thread

Answer = tuple[int, dict] | tuple[int, dict, dict]
SUB = "00000000-0000-0000-0000-000000000000"
GROUP = f"/subscriptions/{SUB}/resourceGroups/rg"
WORKSPACES = f"{GROUP}/providers/Microsoft.MachineLearningServices/workspaces"
WORKSPACE = f"{WORKSPACES}/ws"
STORAGE = f"{GROUP}/providers/Microsoft.Storage/storageAccounts/wsstorage"
REGISTRY = f"{GROUP}/providers/Microsoft.ContainerRegistry/registries/wsregistry"
KEY_VAULT = f"{GROUP}/providers/Microsoft.KeyVault/vaults/wsvault"
AZURE = AzureSettings(subscription_id=SUB, resource_group="rg", workspace_name="ws", location="eastus2")
ENDPOINT_KEY = "primary-key-1"
BUSY_STATES = ("Creating", "Updating", "Deleting")
# Azure's answer to a write while an operation runs on the resource (troubleshooting guide: retry later)
BUSY_ANSWER = (409, {"error": {"code": "Conflict", "message": "An operation is in progress on this resource"}})
# Azure refuses to delete a deployment that takes traffic (the wording is ours: no recording of it was found)
TRAFFIC_ANSWER = (400, {"error": {"code": "BadArgument", "message": "A deployment with traffic cannot be deleted: "
                                                                     "set its traffic to 0 first"}})
A100, H100, V100 = "standardNCADSA100v4Family", "standardNCadsH100v5Family", "standardNCSv3Family"
# What the region offers (vmSizes): Phi-4's smallest A100 and H100 sizes, and the retired NC6s_v3 a region may
# still list.
VM_SIZES = [
    {"name": "Standard_NC24ads_A100_v4", "family": A100, "vCPUs": 24, "gpus": 1},
    {"name": "Standard_NC40ads_H100_v5", "family": H100, "vCPUs": 40, "gpus": 1},
    {"name": "Standard_NC6s_v3", "family": V100, "vCPUs": 6, "gpus": 1},
]


def vcpu_usages(a100: tuple[int, int] = (0, 96), h100: tuple[int, int] = (0, 80), total: tuple[int, int] = (0, 400),
                labels: bool = False) -> dict:
    """The usages API's answer, shaped like the REST spec example (`Usage/list.json`, stable 2024-10-01): the
    regional dedicated total, a subscription-level row per family, then per-workspace and per-compute rows with
    the same name (the last matching row is a compute's). Families are named by code as live answers do, or by
    label as the spec example does (`labels`). Each pair is (vCPUs used, limit)."""
    base = f"/subscriptions/{SUB}/usages"
    workspace = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"

    def rows(family: str, label: str, used: int, limit: int) -> list[dict]:
        name = {"value": label if labels else family, "localizedValue": label}
        return [{"id": f"{base}/{label.replace(' ', '_')}", "type": "Microsoft.MachineLearningServices/vmFamily/usages",
                 "unit": "Count", "currentValue": used, "limit": limit, "name": name},
                {"id": f"{workspace}/usages/{label.replace(' ', '_')}",
                 "type": "Microsoft.MachineLearningServices/workspaces/usages", "unit": "Count", "currentValue": 0,
                 "limit": limit, "name": name},
                {"id": f"{workspace}/computes/other-cluster/usages/{label.replace(' ', '_')}",
                 "type": "Microsoft.MachineLearningServices/workspaces/computes/usages", "unit": "Count",
                 "currentValue": 0, "limit": 10_000, "name": name}]
    regional = "Total Cluster Dedicated Regional vCPUs"
    return {"value": [
        {"id": base, "type": "Microsoft.MachineLearningServices/dedicatedCores/usages", "unit": "Count",
         "currentValue": total[0], "limit": total[1],
         "name": {"value": regional if labels else "TotalDedicatedCores", "localizedValue": regional}},
        *rows(A100, "Standard NCADSA100v4 Family Cluster Dedicated vCPUs", *a100),
        *rows(H100, "Standard NCadsH100v5 Family Cluster Dedicated vCPUs", *h100),
        {"id": f"{base}/Standard_NCADSA100v4_Family_Cluster_LowPriority_vCPUs", "unit": "Count",
         "type": "Microsoft.MachineLearningServices/vmFamily/lowPriorityCores/usages", "currentValue": 0,
         "limit": -1,
         "name": {"value": A100, "localizedValue": "Standard NCADSA100v4 Family Cluster LowPriority vCPUs"}},
    ]}


# ---- the model catalog (the azureml registry), in both metadata shapes ----------------------------------------
PHI4_COMPUTES = ["Standard_NC24ads_A100_v4", "Standard_NC48ads_A100_v4", "Standard_NC96ads_A100_v4",
                 "Standard_ND96asr_v4", "Standard_ND96amsr_A100_v4", "Standard_NC40ads_H100_v5",
                 "Standard_NC80adis_H100_v5", "Standard_ND96isr_H100_v5"]


def phi4_entry(shape: str = "system_metadata") -> dict:
    """Phi-4 v8. `system_metadata`: as Azure/azureml-assets describes it since 2026-07 (assets/models/system/Phi-4/
    spec.yaml at 4b41f8cc): lifecycle and computes under system_metadata, no compute tags, defaults in the
    model_specific_defaults tag. `properties`: the same version as a registry read that returns no system metadata
    shows it: its tags replaced on publish (no compute lists), its add-only properties from before #5190
    (finetuning-tasks, finetune-recommended-sku as comma-separated text, SharedComputeCapacityEnabled)."""
    tags = {"model_specific_defaults": {
        "apply_deepspeed": "true", "deepspeed_stage": 3, "apply_lora": "true", "num_train_epochs": 1,
        "per_device_train_batch_size": 1, "learning_rate": "5e-6", "lr_scheduler_type": "cosine"}}
    if shape == "properties":
        return {"tags": tags, "properties": {"finetuning-tasks": "chat-completion",
                                             "finetune-recommended-sku": ", ".join(PHI4_COMPUTES),
                                             "SharedComputeCapacityEnabled": "True"}}
    return {"tags": tags,
            "systemMetadata": {"tasks": {"fineTuningTasks": ["chat-completion"], "inferenceTasks": ["chat-completion"]},
                               "supportedComputes": {"finetuneComputes": PHI4_COMPUTES,
                                                     "inferenceComputes": PHI4_COMPUTES},
                               "inferenceSupportedEnvs": ["vllm"], "preview": True}}


def phi3_mini_entry(shape: str) -> dict:
    """Phi-3-mini-4k-instruct, retired 2025-08-30: v15 as the 2026-07 spec has it (system_metadata, isArchived),
    v14 in the older shape (tags and properties, as the spec at 4579f881, 2026-04-17)."""
    defaults = {"model_specific_defaults": "{'learning_rate': '5e-6', 'learning_rate_min': '5e-7', "
                                           "'learning_rate_max': '5e-5', 'num_train_epochs': '1'}"}
    if shape == "system_metadata":
        return {"isArchived": True, "tags": defaults, "system_metadata": {
            "tasks": {"fineTuningTasks": ["chat-completion"]},
            "supportedComputes": {"finetuneComputes": PHI4_COMPUTES[:5],
                                  "inferenceComputes": ["Standard_NC6s_v3", *PHI4_COMPUTES[:5]]},
            "deprecation": {"finetuneDeprecationDate": "2025-06-30T00:00:00.000000Z",
                            "finetuneRetirementDate": "2025-08-30T00:00:00.000000Z",
                            "inferenceDeprecationDate": "2025-06-30T00:00:00.000000Z",
                            "inferenceRetirementDate": "2025-08-30T00:00:00.000000Z"}}}
    return {"tags": {**defaults, "FinetuneDeprecationDate": "2025-06-30", "FinetuneRetirementDate": "2025-08-30",
                     "InferenceDeprecationDate": "2025-06-30", "InferenceRetirementDate": "2025-08-30",
                     "finetune_compute_allow_list": "[ Standard_NC24ads_A100_v4,\n Standard_NC48ads_A100_v4, ]",
                     "inference_compute_allow_list": "[ Standard_NC6s_v3,\n Standard_NC24ads_A100_v4, ]"},
            "properties": {"finetuning-tasks": "chat-completion"}}


def phi4_mini_entry() -> dict:
    """Phi-4-mini-instruct as far as Microsoft's serverless notebook reads it (Azure/azureml-examples,
    model-as-a-service chat-completion): offered for serverless fine-tuning, its deploy regions in a tag; no
    managed compute named anywhere, and no fine-tuning tasks either (not known to be listed)."""
    return {"tags": {"maas-finetuning-deploy-regions": '["eastus2", "eastus", "northcentralus", "southcentralus", '
                                                      '"westus", "westus3", "swedencentral"]'}}


def deprecated_entry() -> dict:
    """A model deprecated but not yet retired, in the older tag shape (a test model, not a real catalog entry)."""
    return {"tags": {"FinetuneDeprecationDate": "2026-01-15", "FinetuneRetirementDate": "2099-01-15",
                     "finetune_compute_allow_list": '["Standard_NC24ads_A100_v4"]',
                     "inference_compute_allow_list": '["Standard_NC24ads_A100_v4"]',
                     "model_specific_defaults": '{"learning_rate": "2e-5", "learning_rate_min": "2e-6", '
                                                '"learning_rate_max": "2e-4"}'},
            "properties": {"finetuning-tasks": "chat-completion"}}


class FakeRegistry:
    """The `azureml` model registry as azure-ai-ml 1.35's registry client sees it: the discovery call made when
    the client is made, then the registry's data-plane host (model versions and containers)."""

    DISCOVERY_HOST = "https://eastus.api.azureml.ms"  # AzureCloud's fixed registry discovery endpoint
    HOST = "https://cert-eastus.experiments.azureml.net/"

    def __init__(self, name: str = "azureml"):
        self.name = name
        self.prefix = (f"/mferp/managementfrontend/subscriptions/{SUB}/resourceGroups/registry-builtin-prod-eastus-01"
                       f"/providers/Microsoft.MachineLearningServices/registries/{name}/models")
        self.models: dict[str, dict[str, dict]] = {}
        self.add("Phi-4", "7", {**phi4_entry(), "isArchived": True})
        self.add("Phi-4", "8", phi4_entry())
        self.add("Phi-3-mini-4k-instruct", "14", phi3_mini_entry("tags"))
        self.add("Phi-3-mini-4k-instruct", "15", phi3_mini_entry("system_metadata"))
        self.add("Phi-legacy-test", "2", deprecated_entry())
        self.add("Phi-4-mini-instruct", "1", phi4_mini_entry())
        self.add("Llama-test", "1", phi4_entry())  # another family: never suggested for a Phi model

    def add(self, model: str, version: str, entry: dict) -> None:
        archived = entry.pop("isArchived", False)
        self.models.setdefault(model, {})[version] = {
            "id": f"azureml://registries/{self.name}/models/{model}/versions/{version}", "name": version,
            "type": "models", "systemData": {"createdAt": f"2025-01-{int(version):02d}T00:00:00Z"},
            "properties": {"description": "", "tags": {}, "properties": {}, "isArchived": archived,
                           "stage": "Archived" if archived else "Active", "flavors": {}, "modelType": "mlflow_model",
                           "modelUri": f"azureml://registries/{self.name}/models/{model}/versions/{version}", **entry}}

    @staticmethod
    def _missing(what: str) -> Answer:
        return 404, {"error": {"code": "UserError", "message": f"{what} not found"}}

    def __call__(self, request) -> Answer:
        path = unquote(request.url.split("?")[0].split("://", 1)[1].split("/", 1)[1])
        if path == f"registrymanagement/v1.0/registries/{self.name}/discovery":
            return 200, {"registryName": self.name, "primaryRegion": "eastus", "regions": ["eastus"],
                         "subscriptionId": SUB, "resourceGroup": "registry-builtin-prod-eastus-01",
                         "primaryRegionResourceProviderUri": self.HOST}
        parts = [p for p in ("/" + path).removeprefix(self.prefix).split("/") if p]
        if request.method != "GET" or not ("/" + path).startswith(self.prefix):
            return self._missing(f"{request.method} {path}")
        if not parts:  # models.list(): one container per model
            return 200, {"value": [{"id": f"azureml://registries/{self.name}/models/{m}", "name": m, "type": "models",
                                    "properties": {"tags": {}, "properties": {}, "isArchived": False,
                                                   "latestVersion": max(v, key=int)}}
                                   for m, v in self.models.items()]}
        if parts[0] not in self.models:
            return self._missing(f"Model container {parts[0]}")
        versions = self.models[parts[0]]
        if len(parts) == 2:  # models.list(name=...)
            return 200, {"value": list(versions.values())}
        return (200, versions[parts[2]]) if len(parts) == 3 and parts[2] in versions else self._missing(path)


SIGNED_IN_OBJECT_ID = "11111111-2222-3333-4444-555555555555"


def offline_token(scope: str) -> str:
    """A token shaped as Microsoft Entra's (a JWT) for the scope's audience, of a signed-in user."""
    def part(claims: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")

    claims = {"aud": scope.removesuffix("/.default"), "oid": SIGNED_IN_OBJECT_ID, "idtyp": "user"}
    return f"{part({'typ': 'JWT', 'alg': 'none'})}.{part(claims)}.sig"


class OfflineCredential:
    """A token credential that never leaves the machine."""

    def get_token(self, *scopes, **kwargs) -> AccessToken:
        return AccessToken(offline_token(scopes[0]), 4_102_444_800)

    def get_token_info(self, *scopes, **kwargs) -> AccessTokenInfo:
        return AccessTokenInfo(offline_token(scopes[0]), 4_102_444_800)


class _JsonResponse(HttpResponseImpl):
    def __init__(self, request, status: int, body: dict, headers: dict):
        super().__init__(request=request, internal_response=None, status_code=status, reason="scripted",
                         content_type="application/json",
                         headers=CaseInsensitiveDict({"Content-Type": "application/json", **headers}),
                         stream_download_generator=None)
        self._content = json.dumps(body).encode()
        self._is_closed = True
        self._is_stream_consumed = True

    def body(self) -> bytes:
        return self._content


class ScriptedTransport(HttpTransport):
    """Records every request and answers with `handler(request) -> (status, body[, headers])`."""

    def __init__(self, handler: Callable[[object], Answer]):
        self.handler = handler
        self.requests: list = []
        self.answers: list[tuple[object, int, dict, dict]] = []  # (request, status, headers, body) as sent back
        self.slept: list[float] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return None

    def open(self):
        return None

    def close(self):
        return None

    def send(self, request, **kwargs):
        self.requests.append(request)
        status, body, *headers = self.handler(request)
        self.answers.append((request, status, headers[0] if headers else {}, body))
        return _JsonResponse(request, status, body, headers[0] if headers else {})

    def sleep(self, duration: float) -> None:
        """The SDK's pollers wait through their transport: a recorded operation without Retry-After would
        wait azure-core's default 30 s a poll. Offline nothing needs the wait; it is recorded instead."""
        self.slept.append(duration)

    def calls(self, method: str, fragment: str = "") -> list:
        return [r for r in self.requests if r.method == method and fragment in r.url]


def puts(transport: ScriptedTransport, fragment: str = "") -> list[str]:
    """The URLs (without query) the SDK sent PUTs to, in order."""
    return [r.url.split("?")[0] for r in transport.calls("PUT", fragment)]


def request_json(request) -> dict:
    """The JSON body the SDK sent."""
    return json.loads(request.body)


class FakeArm:
    """An in-memory Azure Resource Manager for one workspace, answering the SDK's REST calls.

    PUT stores the resource and answers 201 with an Azure-AsyncOperation to poll (so the SDK's own
    long-running-operation poller runs), GET reads an item or lists a collection, DELETE removes,
    POST .../listKeys returns keys. `inject(method, fragment, answer)` queues a one-off fault;
    `fail_provisioning(fragment, message)` makes the next matching PUT end in a failed operation.
    Busy like the service: with `operation_ticks` above 0 an operation runs for that many requests, its resource
    `Creating`, `Updating` or `Deleting` meanwhile (as the recordings show), and a write to it then is answered
    409; `end_next(method, fragment, status)` makes the next such operation end Canceled or Failed; a deployment
    that has traffic is never deleted (400), as Azure refuses it.
    Around the workspace: its storage, registry and key vault, the default datastore, built-in role
    definitions, VM sizes and quota (`usages`), and fine-tune jobs that move through `job_states`,
    one state per status read.
    """

    BASE = "https://management.azure.com"
    COLLECTIONS = {"deployments", "versions", "computes", "jobs", "onlineEndpoints", "serverlessEndpoints",
                   "datastores"}

    def __init__(self, workspace_id: str, location: str = "eastus2"):
        self.workspace_id = workspace_id
        self.location = location
        self.resources: dict[str, dict] = {}
        self.faults: list[tuple[str, str, Answer]] = []
        self.failing: dict[str, str] = {}
        self.operations: dict[str, dict] = {}
        self.operation_ticks = 0  # requests an operation takes to end (0: it has ended when the write answers)
        self.endings: list[tuple[str, str, str]] = []  # (method, fragment, Canceled | Failed) for the next operation
        self.polled_in_progress = 0  # operation polls answered InProgress
        self.conflicts: list[str] = []  # "METHOD path" of each write refused (409) while an operation ran
        self.usages = vcpu_usages()
        self.registry = FakeRegistry()
        self.container_registry: str | None = REGISTRY  # None: a workspace whose registry Azure has not made yet
        self.job_states: list[str] = []  # e.g. ["Running", "Completed"]; empty: jobs keep their status
        self.workspace_guid = str(uuid.uuid4())  # a new workspace: nothing cached against an older one applies
        self.scoring_uri = "http://127.0.0.1:9/score"  # where endpoints say they score: nothing listens there
        self.serverless_uri = "http://127.0.0.1:9"  # serverless endpoint X answers at <this>/X/v1/...
        datastore = f"{workspace_id}/datastores/workspaceblobstore"
        self.resources[datastore] = {"id": datastore, "name": "workspaceblobstore", "properties": {
            "datastoreType": "AzureBlob", "accountName": "wsstorage", "containerName": "azureml-blobstore",
            "endpoint": "core.windows.net", "protocol": "https", "isDefault": True,
            "credentials": {"credentialsType": "AccountKey"}}}

    def inject(self, method: str, fragment: str, answer: Answer) -> None:
        self.faults.append((method, fragment, answer))

    def fail_provisioning(self, fragment: str, message: str) -> None:
        self.failing[fragment] = message

    def end_next(self, method: str, fragment: str, status: str) -> None:
        self.endings.append((method, fragment, status))

    def left_running(self, path: str, ticks: int, state: str = "Creating") -> None:
        """The resource as a killed run leaves it: its operation still running for `ticks` requests, nobody
        polling it."""
        self.resources[path]["properties"]["provisioningState"] = state

        def finish(status: str) -> None:
            if path in self.resources:
                self.resources[path]["properties"]["provisioningState"] = status

        self.operations[f"op{len(self.operations)}"] = {"status": "InProgress", "left": ticks, "final": "Succeeded",
                                                       "finish": finish}

    def _ending(self, method: str, path: str) -> str:
        """How the operation of this write ends: Succeeded, or what `end_next` asked for."""
        for index, (wanted, fragment, status) in enumerate(self.endings):
            if wanted == method and fragment in path:
                del self.endings[index]
                return status
        return "Succeeded"

    def _tick(self) -> None:
        """One request's worth of time: operations in progress move on, and those done apply their outcome."""
        for operation in self.operations.values():
            if operation["status"] == "InProgress":
                operation["left"] -= 1
                if operation["left"] <= 0:
                    operation["status"] = operation.pop("final")
                    operation.pop("finish")(operation["status"])

    def _busy(self, path: str, children_too: bool) -> bool:
        """An operation runs on the resource (or, for a delete, which takes them along, on one of its children)."""
        return any((resource.get("properties") or {}).get("provisioningState") in BUSY_STATES
                   for key, resource in self.resources.items()
                   if key == path or children_too and key.startswith(path + "/"))

    def _operation(self, status: str, error: str | None = None, resource: str | None = None,
                   finish: Callable[[str], None] | None = None) -> dict:
        """Long-running-operation headers as recorded (tests/fixtures/recorded/): an online endpoint or deployment
        PUT points Location at the resource itself and gives a 30-minute operation time-out; a compute PUT has
        only Azure-AsyncOperation; neither sends Retry-After. `finish(status)` applies the outcome to the
        resource: at once, or when the operation ends (`operation_ticks`)."""
        operation_id = f"op{len(self.operations)}"
        operation = {"status": status, **({"error": {"code": "DeploymentFailed", "message": error}} if error else {})}
        if status != "Succeeded" and not error:
            operation["error"] = {"code": status, "message": f"The operation was {status.lower()}."}
        if finish and self.operation_ticks:
            operation.update(status="InProgress", left=self.operation_ticks, final=status, finish=finish)
        elif finish:
            finish(status)
        self.operations[operation_id] = operation
        url = f"{self.BASE}{self.workspace_id}/operations/{operation_id}?api-version=2024-10-01"
        if resource and "/onlineEndpoints/" in resource:
            return {"Azure-AsyncOperation": url, "Location": f"{self.BASE}{resource}",
                    "x-ms-async-operation-timeout": "PT30M"}
        if resource and "/computes/" in resource:
            return {"Azure-AsyncOperation": url}
        return {"Azure-AsyncOperation": url, "Location": url}

    def __call__(self, request) -> Answer:
        if request.url.startswith((FakeRegistry.DISCOVERY_HOST, FakeRegistry.HOST)):
            return self.registry(request)
        path = request.url.split("?")[0].removeprefix(self.BASE)
        for index, (method, fragment, answer) in enumerate(self.faults):
            if request.method == method and fragment in path:
                del self.faults[index]
                return answer
        self._tick()
        if "/operations/" in path:
            operation = self.operations[path.rsplit("/", 1)[1]]
            self.polled_in_progress += operation["status"] == "InProgress"
            return 200, {key: operation[key] for key in ("status", "error") if key in operation}
        if path == self.workspace_id:
            return 200, {"id": path, "name": path.rsplit("/", 1)[1], "location": self.location, "kind": "Default",
                         "properties": {"storageAccount": STORAGE, "containerRegistry": self.container_registry,
                                        "keyVault": KEY_VAULT, "workspaceId": self.workspace_guid}}
        if path.endswith("/datastores/workspaceblobstore") and path not in self.resources:
            return 200, {**self.resources[f"{self.workspace_id}/datastores/workspaceblobstore"], "id": path}
        if path.endswith("/vmSizes"):
            return 200, {"value": VM_SIZES}
        if path.endswith("/usages"):
            return 200, self.usages
        if path.endswith("/providers/Microsoft.Authorization/roleDefinitions"):
            role = unquote(request.url).split("roleName eq '")[1].split("'")[0]
            return 200, {"value": [{"id": f"{path}/{role.replace(' ', '-').lower()}", "name": role,
                                    "properties": {"roleName": role, "type": "BuiltInRole"}}]}
        if request.method == "PUT":
            return self._put(path, request_json(request))
        if request.method == "POST" and path.endswith("/listKeys"):
            endpoint = self.resources.get(path.removesuffix("/listKeys"), {})
            if endpoint.get("properties", {}).get("authMode") == "AADToken":  # it has no keys
                return 400, {"error": {"code": "BadArgument", "message": "the endpoint takes AAD tokens, not keys"}}
            return 200, {"primaryKey": ENDPOINT_KEY, "secondaryKey": "secondary-key-1"}
        if request.method == "POST" and "/jobs/" in path and path.endswith("/cancel"):  # 202, then an operation
            self.resources[path.removesuffix("/cancel")]["properties"]["status"] = "Canceled"
            return 202, {}, {"Location": self._operation("Succeeded")["Location"]}
        if request.method in ("PUT", "DELETE") and self._busy(path, children_too=request.method == "DELETE"):
            self.conflicts.append(f"{request.method} {path}")
            return BUSY_ANSWER
        if request.method == "DELETE" and "/deployments/" in path and path in self.resources:
            endpoint = self.resources.get(path.split("/deployments/")[0], {})
            if (endpoint.get("properties", {}).get("traffic") or {}).get(path.rsplit("/", 1)[1]):
                return TRAFFIC_ANSWER
        if request.method == "DELETE":  # a resource goes with its children (an endpoint's deployments)
            gone = self.resources.get(path)
            if gone is None:
                return 204, {}
            if "/roleAssignments/" in path or "/connections/" in path:  # not long-running operations
                self._remove(path)
                return (200, gone) if "/roleAssignments/" in path else (200, {})  # an assignment comes back
            gone.setdefault("properties", {})["provisioningState"] = "Deleting" if self.operation_ticks else (
                gone.get("properties", {}).get("provisioningState"))

            def finish(status: str) -> None:
                if status == "Succeeded":
                    self._remove(path)
                elif path in self.resources:
                    self.resources[path]["properties"]["provisioningState"] = "Succeeded"

            headers = self._operation(self._ending("DELETE", path), resource=path, finish=finish)
            if "Location" in headers:  # recorded: a delete's Location is an operation result, not the resource
                headers["Location"] = headers["Azure-AsyncOperation"]
            return 202, {}, headers
        if path in self.resources:
            if "/jobs/" in path and request.method == "GET" and self.job_states:
                self._advance_job(path)
            return 200, self.resources[path]
        if request.method == "GET" and path.rsplit("/", 1)[1] in self.COLLECTIONS:
            workspace = "/".join(path.split("/")[:9])  # /subscriptions/s/resourceGroups/g/providers/p/workspaces/w
            if "/workspaces/" in path and workspace != self.workspace_id and workspace not in self.resources:
                return 404, {"error": {"code": "ResourceNotFound", "message": f"{workspace} not found"}}
            items = [r for key, r in self.resources.items() if key.rsplit("/", 1)[0] == path]
            if "/models/" in path and not items:  # recorded: a model name with no versions yet is a 404
                return 404, {"error": {"code": "UserError", "message": "The specified resource was not found.",
                                       "details": [{"code": "ModelNotFound", "message": "Model container not found"}]}}
            return 200, {"value": items}
        return 404, {"error": {"code": "ResourceNotFound", "message": f"{path} not found"}}

    def _advance_job(self, path: str) -> None:
        job = self.resources[path]
        properties = job["properties"]
        states = self.job_states
        current = properties.get("status")
        properties["status"] = states[0] if current not in states else states[min(states.index(current) + 1,
                                                                                    len(states) - 1)]
        if properties["status"] == "Completed" and current != "Completed":
            self._register_output(path)

    def _register_output(self, job_path: str) -> None:
        """What the fine-tuning service does when a job completes: register its output, in the job's workspace,
        as the next version of the model named by `output_model_name_prefix`, with the job as its lineage
        (`jobName`)."""
        job = self.resources[job_path]
        output = (job["properties"].get("outputs") or {}).get("registered_model")
        if not output or not output.get("assetName"):
            return
        container = f"{job_path.split('/jobs/')[0]}/models/{output['assetName']}/versions"
        version = 1 + max((int(key.rsplit("/", 1)[1]) for key in self.resources if key.startswith(container + "/")),
                          default=0)
        path = f"{container}/{version}"
        self.resources[path] = {"id": path, "name": str(version), "properties": {
            "modelType": "mlflow_model", "modelUri": f"azureml://jobs/{job['name']}/outputs/registered_model",
            "jobName": job["name"], "flavors": {}, "tags": {}, "properties": {}, "isArchived": False,
            "stage": "Development", "provisioningState": "Succeeded"}}
        output["assetVersion"] = str(version)

    def _put(self, path: str, body: dict) -> Answer:
        body = {**body, "id": path, "name": path.rsplit("/", 1)[1], "location": self.location}
        properties = body.setdefault("properties", {})
        if "/userAssignedIdentities/" in path:
            properties.update(principalId="principal-1", clientId="client-1", tenantId="tenant-1")
        if "/roleAssignments/" in path and path in self.resources:
            return 409, {"error": {"code": "RoleAssignmentExists", "message": "The role assignment already exists."}}
        if "/connections/" in path:  # recorded: 200, no LRO headers, secrets never echoed
            self.resources[path] = body
            return 200, {**body, "properties": {**properties, "credentials": None}}
        if "/roleAssignments/" in path or "/userAssignedIdentities/" in path:
            self.resources[path] = body  # not long-running operations
            return (201 if "/roleAssignments/" in path else 200), body
        if refusal := self._serverless_refusal(path, properties):
            return 400, refusal
        if "/jobs/" in path or "/models/" in path:  # recorded: 201 with only a Location header, not an LRO
            if "/jobs/" in path:
                properties["status"] = "NotStarted"
            else:  # the version's lineage is the service's to set: a PUT (e.g. new tags) keeps it
                properties.setdefault("flavors", {})
                properties["provisioningState"] = "Succeeded"
                properties.setdefault("jobName", (self.resources.get(path) or {}).get("properties", {}).get("jobName"))
            self.resources[path] = body
            return 201, body, {"Location": f"{self.BASE}{path}"}
        if "/deployments/" in path:  # what the service fills in
            properties.setdefault("scaleSettings", {"scaleType": "Default"})
        elif "/onlineEndpoints/" in path:
            properties["scoringUri"] = self.scoring_uri
        elif "/serverlessEndpoints/" in path:
            properties["inferenceEndpoint"] = {"uri": f"{self.serverless_uri}/{body['name']}", "headers": {}}
            properties["authMode"] = "Key"
        failure = next((message for fragment, message in self.failing.items() if fragment in path), None)
        existed = path in self.resources
        properties["provisioningState"] = ("Updating" if existed else "Creating") if self.operation_ticks else None
        self.resources[path] = body

        def finish(status: str) -> None:
            if path in self.resources:
                self.resources[path]["properties"]["provisioningState"] = status

        creating = {**body, "properties": {**properties, "provisioningState": "Creating"}}
        status = "Failed" if failure else self._ending("PUT", path)
        return 201, creating, self._operation(status, failure, resource=path, finish=finish)

    def _remove(self, path: str) -> None:
        """A resource goes with its children (an endpoint's deployments)."""
        for key in [key for key in self.resources if key == path or key.startswith(path + "/")]:
            del self.resources[key]


    def _serverless_refusal(self, path: str, properties: dict) -> dict | None:
        """The service's answer to a serverless fine-tune (a FineTuning job without a compute) submitted in a
        workspace whose region does not offer it: HTTP 400 as recorded (azure-sdk-assets d0dbcead)."""
        details = properties.get("fineTuningDetails")
        if "/jobs/" not in path or not details or properties.get("computeId"):
            return None
        region = self.resources.get(path.split("/jobs/")[0], {}).get("location", self.location)
        model = details["model"]["uri"].split("/models/")[1].split("/")[0]
        if region in FINETUNE_REGIONS.get(model.lower(), ()):  # where Microsoft's table says it runs
            return None
        return {"error": {"code": "UserError", "message": f"{model} : Serverless FineTuning not supported in {region}.",
                          "innerError": {"code": "ModelNotSupportedByMaaS"}}}


def offline_ml_client(handler: Callable[[object], Answer]) -> tuple[MLClient, ScriptedTransport]:
    """The real MLClient for workspace `ws`, its HTTP answered by `handler`; retries without long waits."""
    transport = ScriptedTransport(handler)
    return MLClient(OfflineCredential(), SUB, "rg", "ws", transport=transport, retry_backoff_factor=0.01), transport


class FakeTemplateDeployments:
    """Stands in for the SDK's ARM template executor, which creates hubs and projects through a client of
    its own (not the MLClient's transport): each deployment is recorded and its workspace stored."""

    def __init__(self, arm: FakeArm):
        self.arm = arm
        self.deployed: list[dict] = []

    def executor(self, **_client_arguments):
        return SimpleNamespace(deploy_resource=self._deploy, _check_deployment_status=lambda: None)

    def _deploy(self, template, resources_being_deployed, parameters=None, wait=True):
        values = {key: entry.get("value") for key, entry in (parameters or {}).items()}
        self.deployed.append(values)
        name, kind = values["workspaceName"], values["kind"]
        properties = ({"hubResourceId": values["workspace_hub"]} if kind == "project"
                      else {"storageAccount": STORAGE, "keyVault": KEY_VAULT})
        properties["workspaceId"] = str(uuid.uuid4())
        self.arm.resources[f"{WORKSPACES}/{name}"] = {
            "id": f"{WORKSPACES}/{name}", "name": name, "location": values["location"], "kind": kind,
            "tags": values.get("tagValues") or {}, "properties": properties}
        return SimpleNamespace(done=lambda: True, _exception=None,
                               result=lambda: SimpleNamespace(properties=SimpleNamespace(duration="PT1S")))


@contextmanager
def scoring_stub(answer: str, speaks: tuple[str, ...] = ("input_data", "chat_completions"), body: object = None,
                 bearer: str = ENDPOINT_KEY) -> Iterator[tuple[str, list[dict], list]]:
    """A 127.0.0.1 stand-in for the endpoint's scoring URI, behind the key (or the token given as `bearer`),
    answering the contracts it `speaks` as the catalog's inference server does (input_data on /score,
    chat_completions on /chat/completions, and on /<endpoint>/v1/chat/completions as serverless endpoint
    <endpoint> does; any other route is a 404; a chat completion asked with `stream` comes as vLLM's server-sent
    events). Yields (scoring URI, the request bodies it answered, each with the deployment it was addressed to,
    the serverless endpoint whose URI it came in on and its contract, refusals: predicates on such a request that
    make it answer HTTP 400). With `body`, every answer is that body instead (an inference server's failed
    answer)."""
    answered: list[dict] = []
    refusals: list[Callable[[dict], bool]] = []
    chat = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1764633600, "model": "phi3-custom",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 11, "total_tokens": 23}}  # as vLLM answers
    # a serverless endpoint answers chat completions under /v1 of its inference URI
    routes = {"/score": ("input_data", {"output": answer}), "/chat/completions": ("chat_completions", chat),
              "/v1/chat/completions": ("chat_completions", chat)}
    if body is not None:  # what a failing inference server answers, with HTTP 200, on either route
        routes = {path: (contract, body) for path, (contract, _) in routes.items()}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            body["deployment"] = self.headers.get("azureml-model-deployment")
            endpoint, _, route = self.path.rpartition("/v1/")  # a serverless endpoint's: /<its name>/v1/...
            body["endpoint"] = endpoint.strip("/") if route else None
            contract, reply = routes.get(f"/v1/{route}" if endpoint else self.path, (None, None))
            body["contract"] = contract
            authorised = self.headers.get("Authorization") == f"Bearer {bearer}"
            status, reply = (200, reply) if authorised else (401, {"error": "bad key"})
            if authorised and contract not in speaks:
                status, reply = 404, {"error": f"no route {self.path}"}
            elif authorised and any(refuse(body) for refuse in refusals):
                status, reply = 400, {"error": "refused by the test"}
            elif authorised:
                answered.append(body)
            if status == 200 and contract == "chat_completions" and body.get("stream"):
                return self._stream(answer)
            payload = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _stream(self, text: str) -> None:
            """The answer as vLLM streams it: server-sent chunks of the reply, the finish, the usage, [DONE]."""
            chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1764633600,
                     "model": "phi3-custom"}
            words = text.split(" ")
            events = [{**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": piece},
                                             "finish_reason": None}]}
                      for piece in [words[0], *(f" {word}" for word in words[1:])]]
            events.append({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            events.append({**chunk, "choices": [], "usage": chat["usage"]})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for event in events:
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")

        def log_message(self, *args):
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with served_in_a_thread(server.serve_forever, lambda: (server.shutdown(), server.server_close())):
        yield f"http://127.0.0.1:{server.server_port}/score", answered, refusals
