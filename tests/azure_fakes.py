"""An azure-core HTTP transport that answers from scripted JSON, so the real SDK clients run offline."""

from __future__ import annotations

import json
from collections.abc import Callable

from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest._http_response_impl import HttpResponseImpl

Answer = tuple[int, dict] | tuple[int, dict, dict]


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
                         headers={"Content-Type": "application/json", **headers},
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
