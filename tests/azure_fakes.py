"""An azure-core HTTP transport that answers from scripted JSON, so the real SDK clients run offline."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

from azure.ai.ml import MLClient
from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest._http_response_impl import HttpResponseImpl
from azure.core.utils import CaseInsensitiveDict

from pipeline.config import AzureSettings

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
VM_SIZES = [
    {"name": "Standard_NC24ads_A100_v4", "family": "standardNCADSA100v4Family", "vCPUs": 24, "gpus": 1},
    {"name": "Standard_NC6s_v3", "family": "standardNCSv3Family", "vCPUs": 6, "gpus": 1},
]


def vcpu_usages(a100_used: int, a100_limit: int, ncv3_used: int, ncv3_limit: int) -> dict:
    """The usages API's answer for the two GPU families of the tutorial."""
    def usage(family, label, used, limit):
        return {"id": f"/subscriptions/{SUB}/providers/Microsoft.MachineLearningServices/locations/eastus2/"
                      f"usages/{family}", "type": "Microsoft.MachineLearningServices/vmFamily/usages",
                "unit": "Count", "currentValue": used, "limit": limit,
                "name": {"value": family, "localizedValue": label}}
    return {"value": [
        usage("standardNCADSA100v4Family", "Standard NCADSA100v4 Family Cluster Dedicated vCPUs", a100_used,
              a100_limit),
        usage("standardNCSv3Family", "Standard NCSv3 Family Cluster Dedicated vCPUs", ncv3_used, ncv3_limit),
    ]}


class OfflineCredential:
    """A token credential that never leaves the machine."""

    def get_token(self, *scopes, **kwargs) -> AccessToken:
        return AccessToken("offline-token", 4_102_444_800)

    def get_token_info(self, *scopes, **kwargs) -> AccessTokenInfo:
        return AccessTokenInfo("offline-token", 4_102_444_800)


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
        return _JsonResponse(request, status, body, headers[0] if headers else {})

    def calls(self, method: str, fragment: str = "") -> list:
        return [r for r in self.requests if r.method == method and fragment in r.url]


def request_json(request) -> dict:
    """The JSON body the SDK sent."""
    return json.loads(request.body)


class FakeArm:
    """An in-memory Azure Resource Manager for one workspace, answering the SDK's REST calls.

    PUT stores the resource and answers 201 with an Azure-AsyncOperation to poll (so the SDK's own
    long-running-operation poller runs), GET reads an item or lists a collection, DELETE removes,
    POST .../listKeys returns keys. `inject(method, fragment, answer)` queues a one-off fault;
    `fail_provisioning(fragment, message)` makes the next matching PUT end in a failed operation.
    Around the workspace: its storage, registry and key vault, the default datastore, built-in role
    definitions, VM sizes and quota (`usages`), and fine-tune jobs that move through `job_states`,
    one state per status read.
    """

    BASE = "https://management.azure.com"
    COLLECTIONS = {"deployments", "versions", "computes", "jobs", "onlineEndpoints"}

    def __init__(self, workspace_id: str, location: str = "eastus2"):
        self.workspace_id = workspace_id
        self.location = location
        self.resources: dict[str, dict] = {}
        self.faults: list[tuple[str, str, Answer]] = []
        self.failing: dict[str, str] = {}
        self.operations: dict[str, dict] = {}
        self.usages = vcpu_usages(0, 24, 0, 24)
        self.job_states: list[str] = []  # e.g. ["Running", "Completed"]; empty: jobs keep their status
        self.workspace_guid = str(uuid.uuid4())  # a new workspace: nothing cached against an older one applies
        self.scoring_uri = "http://127.0.0.1:9/score"  # where endpoints say they score: nothing listens there
        datastore = f"{workspace_id}/datastores/workspaceblobstore"
        self.resources[datastore] = {"id": datastore, "name": "workspaceblobstore", "properties": {
            "datastoreType": "AzureBlob", "accountName": "wsstorage", "containerName": "azureml-blobstore",
            "endpoint": "core.windows.net", "protocol": "https", "isDefault": True,
            "credentials": {"credentialsType": "AccountKey"}}}

    def inject(self, method: str, fragment: str, answer: Answer) -> None:
        self.faults.append((method, fragment, answer))

    def fail_provisioning(self, fragment: str, message: str) -> None:
        self.failing[fragment] = message

    def _operation(self, status: str, error: str | None = None) -> dict:
        operation_id = f"op{len(self.operations)}"
        self.operations[operation_id] = {"status": status, **({"error": {"code": "DeploymentFailed",
                                                                          "message": error}} if error else {})}
        url = f"{self.BASE}{self.workspace_id}/operations/{operation_id}?api-version=2024-10-01"
        return {"Azure-AsyncOperation": url, "Location": url, "Retry-After": "0"}

    def __call__(self, request) -> Answer:
        path = request.url.split("?")[0].removeprefix(self.BASE)
        for index, (method, fragment, answer) in enumerate(self.faults):
            if request.method == method and fragment in path:
                del self.faults[index]
                return answer
        if "/operations/" in path:
            return 200, self.operations[path.rsplit("/", 1)[1]]
        if path == self.workspace_id:
            return 200, {"id": path, "name": path.rsplit("/", 1)[1], "location": self.location, "kind": "Default",
                         "properties": {"storageAccount": STORAGE, "containerRegistry": REGISTRY,
                                        "keyVault": KEY_VAULT, "workspaceId": self.workspace_guid}}
        if path.endswith("/vmSizes"):
            return 200, {"value": VM_SIZES}
        if path.endswith("/usages"):
            return 200, self.usages
        if path.endswith("/providers/Microsoft.Authorization/roleDefinitions"):
            role = request.url.split("roleName%20eq%20%27")[1].split("%27")[0].replace("%20", " ")
            return 200, {"value": [{"id": f"{path}/{role.replace(' ', '-').lower()}", "name": role,
                                    "properties": {"roleName": role, "type": "BuiltInRole"}}]}
        if request.method == "PUT":
            return self._put(path, request_json(request))
        if request.method == "POST" and path.endswith("/listKeys"):
            return 200, {"primaryKey": ENDPOINT_KEY, "secondaryKey": "secondary-key-1"}
        if request.method == "DELETE":  # a resource goes with its children (an endpoint's deployments)
            if self.resources.pop(path, None) is None:
                return 204, {}
            for child in [key for key in self.resources if key.startswith(path + "/")]:
                del self.resources[child]
            if "/connections/" in path:  # not a long-running operation
                return 200, {}
            return 202, {}, self._operation("Succeeded")
        if path in self.resources:
            if "/jobs/" in path and request.method == "GET" and self.job_states:
                self._advance_job(self.resources[path])
            return 200, self.resources[path]
        if request.method == "GET" and path.rsplit("/", 1)[1] in self.COLLECTIONS:
            return 200, {"value": [r for key, r in self.resources.items() if key.rsplit("/", 1)[0] == path]}
        return 404, {"error": {"code": "ResourceNotFound", "message": f"{path} not found"}}

    def _advance_job(self, job: dict) -> None:
        properties = job["properties"]
        states = self.job_states
        current = properties.get("status")
        properties["status"] = states[0] if current not in states else states[min(states.index(current) + 1,
                                                                                    len(states) - 1)]

    def _put(self, path: str, body: dict) -> Answer:
        body = {**body, "id": path, "name": path.rsplit("/", 1)[1], "location": self.location}
        properties = body.setdefault("properties", {})
        if "/userAssignedIdentities/" in path:
            properties.update(principalId="principal-1", clientId="client-1", tenantId="tenant-1")
        if "/roleAssignments/" in path and path in self.resources:
            return 409, {"error": {"code": "RoleAssignmentExists", "message": "The role assignment already exists."}}
        if "/connections/" in path or "/roleAssignments/" in path or "/userAssignedIdentities/" in path:
            self.resources[path] = body  # not long-running operations
            return (201 if "/roleAssignments/" in path else 200), body
        if "/jobs/" in path:
            properties["status"] = "NotStarted"
        if "/deployments/" in path:  # what the service fills in
            properties.setdefault("scaleSettings", {"scaleType": "Default"})
        elif "/models/" in path:
            properties.setdefault("flavors", {})
        elif "/onlineEndpoints/" in path:
            properties["scoringUri"] = self.scoring_uri
        failure = next((message for fragment, message in self.failing.items() if fragment in path), None)
        properties["provisioningState"] = "Failed" if failure else "Succeeded"
        self.resources[path] = body
        creating = {**body, "properties": {**properties, "provisioningState": "Creating"}}
        return 201, creating, self._operation("Failed" if failure else "Succeeded", failure)


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
        self.arm.resources[f"{WORKSPACES}/{name}"] = {
            "id": f"{WORKSPACES}/{name}", "name": name, "location": values["location"], "kind": kind,
            "tags": values.get("tagValues") or {}, "properties": properties}
        return SimpleNamespace(done=lambda: True, _exception=None,
                               result=lambda: SimpleNamespace(properties=SimpleNamespace(duration="PT1S")))


@contextmanager
def scoring_stub(answer: str) -> Iterator[tuple[str, list[dict], list]]:
    """A 127.0.0.1 stand-in for the endpoint's scoring URI: the tutorial's contract behind the key.
    Yields (scoring URI, the request bodies it answered, each with the deployment it was addressed to,
    refusals: predicates on such a request that make it answer HTTP 400)."""
    answered: list[dict] = []
    refusals: list[Callable[[dict], bool]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            body["deployment"] = self.headers.get("azureml-model-deployment")
            authorised = self.headers.get("Authorization") == f"Bearer {ENDPOINT_KEY}"
            status, reply = (200, {"output": answer}) if authorised else (401, {"error": "bad key"})
            if authorised and any(refuse(body) for refuse in refusals):
                status, reply = 400, {"error": "refused by the test"}
            elif authorised:
                answered.append(body)
            payload = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/score", answered, refusals
    finally:
        server.shutdown()
        server.server_close()
