"""Blob Storage's blob leases, offline: the subset of the Blob service the workspace lease uses, following the
service's own lease semantics (REST reference, "Lease Blob": the lease states and the outcome of each action in
each state, and the error codes of "Blob service error codes"), so the real azure-storage-blob client runs
against it.

One `FakeBlobStorage` answers the SDK in this process (as a ScriptedTransport handler) or, behind
`serve_storage`, processes of their own, which reach it through `ForwardingTransport`.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from azure.core.pipeline.transport import RequestsTransport

from tests.conftest import served_in_a_thread

ACCOUNT_HOST = "wsstorage.blob.core.windows.net"  # the test workspace's default datastore's account
MESSAGES = {
    "LeaseAlreadyPresent": "There is already a lease present.",
    "LeaseIsBreakingAndCannotBeAcquired": "There is already a breaking lease present.",
    "LeaseIdMismatchWithLeaseOperation": "The lease ID specified did not match the lease ID for the blob.",
    "LeaseNotPresentWithLeaseOperation": "There is currently no lease on the blob.",
    "LeaseIsBrokenAndCannotBeRenewed": "The lease ID matched, but the lease has been broken explicitly and cannot be "
                                       "renewed.",
    "LeaseIdMissing": "There is currently a lease on the blob and no lease ID was specified in the request.",
    "LeaseIdMismatchWithBlobOperation": "The lease ID specified did not match the lease ID for the blob.",
    "LeaseNotPresentWithBlobOperation": "There is currently no lease on the blob.",
    "LeaseLost": "A lease ID was specified, but the lease for the blob has expired.",
    "BlobNotFound": "The specified blob does not exist.",
    "BlobAlreadyExists": "The specified blob already exists.",
    "InvalidHeaderValue": "The value for one of the HTTP headers is not in the correct format.",
    "AuthorizationPermissionMismatch": "This request is not authorized to perform this operation using this "
                                       "permission.",
}


@dataclass
class Lease:
    id: str
    duration: int  # seconds, or -1: infinite
    expires: float  # clock time (inf for an infinite lease)
    broken_at: float | None = None  # set by a break: breaking until then, broken after


@dataclass
class Blob:
    metadata: dict[str, str] = field(default_factory=dict)
    lease: Lease | None = None
    etag: str = field(default_factory=lambda: f'"0x{uuid.uuid4().hex[:15].upper()}"')


class Refusal(Exception):
    def __init__(self, status: int, code: str):
        super().__init__(code)
        self.status, self.code = status, code


class FakeBlobStorage:
    """Blobs by path (/container/blob), each with its metadata and lease. `advance(seconds)` moves its clock (a
    lease runs out without waiting); `authorized` says whether the caller holds a data role (else every request is
    answered 403 AuthorizationPermissionMismatch, as for a principal without one)."""

    def __init__(self):
        self.blobs: dict[str, Blob] = {}
        self.skew = 0.0
        self.authorized: Callable[[], bool] = lambda: True
        self.requests: list[tuple[str, str, str]] = []  # (method, path, lease action or comp)
        self.lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() + self.skew

    def advance(self, seconds: float) -> None:
        self.skew += seconds

    def state(self, blob: Blob) -> str:
        """available, leased, expired, breaking or broken, as Get Blob Properties' x-ms-lease-state says."""
        lease = blob.lease
        if lease is None:
            return "available"
        if lease.broken_at is not None:
            return "breaking" if self.now() < lease.broken_at else "broken"
        return "leased" if self.now() < lease.expires else "expired"

    # ---- the service's answers ----------------------------------------------------------------------------
    def answer(self, method: str, path: str, query: dict[str, str], headers: dict[str, str]) -> tuple[int, dict]:
        """(status, response headers); a refusal's code in x-ms-error-code, as the service sends it."""
        with self.lock:
            self.requests.append((method, path, headers.get("x-ms-lease-action") or query.get("comp", "")))
            try:
                if not self.authorized():
                    raise Refusal(403, "AuthorizationPermissionMismatch")
                status, extra = self._answer(method, path, query, headers)
            except Refusal as refusal:
                return refusal.status, {"x-ms-error-code": refusal.code}
            blob = self.blobs.get(path)
            return status, {**extra, **({"ETag": blob.etag} if blob else {}),
                            "Last-Modified": formatdate(usegmt=True), "x-ms-request-id": str(uuid.uuid4()),
                            "x-ms-version": "2026-02-06"}

    def _answer(self, method: str, path: str, query: dict, headers: dict) -> tuple[int, dict]:
        blob = self.blobs.get(path)
        if method == "PUT" and query.get("comp") == "lease":
            return self._lease(path, blob, headers)
        if blob is None and not (method == "PUT" and "comp" not in query):
            raise Refusal(404, "BlobNotFound")
        if method == "HEAD":
            return 200, self._properties(blob)
        if method == "PUT" and "comp" not in query:  # Put Blob
            if blob is not None and headers.get("If-None-Match") == "*":
                raise Refusal(409, "BlobAlreadyExists")
            if blob is not None:
                self._may_write(blob, headers)
            self.blobs[path] = Blob(metadata=_metadata(headers), lease=blob.lease if blob else None)
            return 201, {}
        if method == "PUT" and query.get("comp") == "metadata":
            self._may_write(blob, headers)
            blob.metadata = _metadata(headers)
            return 200, {}
        raise Refusal(400, "InvalidHeaderValue")

    def _properties(self, blob: Blob) -> dict:
        state = self.state(blob)
        headers = {"Content-Length": "0", "x-ms-blob-type": "BlockBlob", "x-ms-lease-state": state,
                   "x-ms-lease-status": "locked" if state in ("leased", "breaking") else "unlocked",
                   "x-ms-creation-time": formatdate(usegmt=True)}
        if state == "leased":
            headers["x-ms-lease-duration"] = "infinite" if blob.lease.duration == -1 else "fixed"
        return headers | {f"x-ms-meta-{name}": value for name, value in blob.metadata.items()}

    def _may_write(self, blob: Blob, headers: dict) -> None:
        """A write to a blob: an active lease (leased or breaking) needs its id; a lease id sent for a lease that
        is no longer active is refused; a write without one ends an expired or broken lease."""
        given, state = headers.get("x-ms-lease-id"), self.state(blob)
        if state in ("leased", "breaking"):
            if given is None:
                raise Refusal(412, "LeaseIdMissing")
            if given != blob.lease.id:
                raise Refusal(412, "LeaseIdMismatchWithBlobOperation")
        elif given is not None:
            raise Refusal(412, "LeaseLost" if state == "expired" and given == blob.lease.id
                          else "LeaseNotPresentWithBlobOperation")
        elif state in ("expired", "broken"):
            blob.lease = None

    def _lease(self, path: str, blob: Blob | None, headers: dict) -> tuple[int, dict]:
        if blob is None:
            raise Refusal(404, "BlobNotFound")
        action, given, state = headers.get("x-ms-lease-action"), headers.get("x-ms-lease-id"), self.state(blob)
        lease = blob.lease
        if action == "acquire":
            duration = int(headers.get("x-ms-lease-duration", "0"))
            if duration != -1 and not 15 <= duration <= 60:
                raise Refusal(400, "InvalidHeaderValue")
            proposed = headers.get("x-ms-proposed-lease-id") or str(uuid.uuid4())
            if state == "leased" and proposed != lease.id:
                raise Refusal(409, "LeaseAlreadyPresent")
            if state == "breaking":
                raise Refusal(409, "LeaseIsBreakingAndCannotBeAcquired")
            blob.lease = Lease(proposed, duration, self._until(duration))
            return 201, {"x-ms-lease-id": proposed}
        if action == "break":
            if state == "available":
                raise Refusal(409, "LeaseNotPresentWithLeaseOperation")
            remaining = max(0.0, (lease.broken_at if state == "breaking" else lease.expires) - self.now())
            if state in ("expired", "broken"):
                remaining = 0.0
            period = headers.get("x-ms-lease-break-period")
            if period is not None and (lease.duration == -1 or int(period) < remaining):
                remaining = float(period)
            lease.broken_at = self.now() + remaining
            return 202, {"x-ms-lease-time": str(int(remaining))}
        if state == "available":
            raise Refusal(409, "LeaseNotPresentWithLeaseOperation")
        if given != lease.id:
            raise Refusal(409, "LeaseIdMismatchWithLeaseOperation")
        if action == "renew":
            if state in ("breaking", "broken"):
                raise Refusal(409, "LeaseIsBrokenAndCannotBeRenewed")
            lease.expires = self._until(lease.duration)
            return 200, {"x-ms-lease-id": lease.id}
        if action == "release":
            blob.lease = None
            return 200, {}
        raise Refusal(400, "InvalidHeaderValue")  # change: not used by the pipeline, not faked

    def _until(self, duration: int) -> float:
        return float("inf") if duration == -1 else self.now() + duration

    # ---- the two ways in ----------------------------------------------------------------------------------
    def __call__(self, request) -> tuple[int, dict, dict]:
        """A ScriptedTransport handler: the SDK in this process."""
        url = urlsplit(request.url)
        status, headers = self.answer(request.method, url.path, _query(url.query), dict(request.headers))
        return status, {}, headers


def _query(text: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(text).items()}


def _metadata(headers: dict) -> dict[str, str]:
    return {name[len("x-ms-meta-"):]: value for name, value in headers.items()
            if name.lower().startswith("x-ms-meta-")}


@contextmanager
def serve_storage(storage: FakeBlobStorage) -> Iterator[str]:
    """The fake as an HTTP server on 127.0.0.1, for processes of their own; its base URL."""
    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            url = urlsplit(self.path)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, headers = storage.answer(self.command, url.path, _query(url.query),
                                             {name: value for name, value in self.headers.items()})
            code = headers.get("x-ms-error-code")
            body = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
                    f"<Message>{MESSAGES.get(code, code)}</Message></Error>").encode() if code else b""
            length = headers.pop("Content-Length", "0") if self.command == "HEAD" else str(len(body))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if body:
                self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", length)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_PUT = do_HEAD = do_GET = _reply

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with served_in_a_thread(server.serve_forever, server.shutdown):
        yield f"http://127.0.0.1:{server.server_address[1]}"
    server.server_close()


class ForwardingTransport(RequestsTransport):
    """Sends the SDK's requests for the storage account to `base_url` (a `serve_storage` server) instead."""

    def __init__(self, base_url: str, **kwargs):
        super().__init__(**kwargs)
        self.base_url = base_url

    def send(self, request, **kwargs):
        url = urlsplit(request.url)
        request.url = f"{self.base_url}{url.path}" + (f"?{url.query}" if url.query else "")
        return super().send(request, **kwargs)
