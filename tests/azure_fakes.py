"""An azure-core HTTP transport that answers from scripted JSON, so the real SDK clients run offline."""

from __future__ import annotations

import json
from collections.abc import Callable

from azure.ai.ml import MLClient
from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest._http_response_impl import HttpResponseImpl
from azure.core.utils import CaseInsensitiveDict

from pipeline.config import AzureSettings

Answer = tuple[int, dict] | tuple[int, dict, dict]
SUB = "00000000-0000-0000-0000-000000000000"
WORKSPACE = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"
AZURE = AzureSettings(subscription_id=SUB, resource_group="rg", workspace_name="ws", location="eastus2")


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
            return 200, {"id": path, "name": path.rsplit("/", 1)[1], "location": self.location, "properties": {}}
        if request.method == "PUT":
            return self._put(path, request_json(request))
        if request.method == "POST" and path.endswith("/listKeys"):
            return 200, {"primaryKey": "primary-key-1", "secondaryKey": "secondary-key-1"}
        if request.method == "DELETE":
            if self.resources.pop(path, None) is None:
                return 204, {}
            return 202, {}, self._operation("Succeeded")
        if path in self.resources:
            return 200, self.resources[path]
        if request.method == "GET" and path.rsplit("/", 1)[1] in self.COLLECTIONS:
            return 200, {"value": [r for key, r in self.resources.items() if key.rsplit("/", 1)[0] == path]}
        return 404, {"error": {"code": "ResourceNotFound", "message": f"{path} not found"}}

    def _put(self, path: str, body: dict) -> Answer:
        body = {**body, "id": path, "name": path.rsplit("/", 1)[1], "location": self.location}
        properties = body.setdefault("properties", {})
        if "/deployments/" in path:  # what the service fills in
            properties.setdefault("scaleSettings", {"scaleType": "Default"})
        elif "/models/" in path:
            properties.setdefault("flavors", {})
        elif "/onlineEndpoints/" in path:
            properties["scoringUri"] = f"https://{body['name']}.{self.location}.inference.ml.azure.com/score"
        failure = next((message for fragment, message in self.failing.items() if fragment in path), None)
        properties["provisioningState"] = "Failed" if failure else "Succeeded"
        self.resources[path] = body
        creating = {**body, "properties": {**properties, "provisioningState": "Creating"}}
        return 201, creating, self._operation("Failed" if failure else "Succeeded", failure)


def offline_ml_client(handler: Callable[[object], Answer]) -> tuple[MLClient, ScriptedTransport]:
    """The real MLClient for workspace `ws`, its HTTP answered by `handler`; retries without long waits."""
    transport = ScriptedTransport(handler)
    return MLClient(OfflineCredential(), SUB, "rg", "ws", transport=transport, retry_backoff_factor=0.01), transport
