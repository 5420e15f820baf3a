"""One writer per Azure workspace across machines: a blob lease in the workspace's default storage account.

The run lock (phi3_pipeline/locks.py) holds on one machine, the Prefect slot (tasks/workspace_slot.py) among runs
of one Prefect server. Runs with nothing in common (a laptop with a temporary Prefect server, a worker of another
server) meet here, in the cloud they write to. Blob Storage's own lease semantics do the work: one lease at a
time (another acquire is answered 409 LeaseAlreadyPresent), renewed while the run lives, ending on its own
LEASE_S after the holder's machine dies, and broken only on purpose (`az storage blob lease break`). The holder
writes its machine, run id and start time into the blob's metadata under the lease, which is how a waiter
names it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobClient, BlobLeaseClient

from phi3_pipeline.locks import WorkspaceBusyError

LEASE_BLOB = "phi3-pipeline/workspace.lease"  # in the default datastore's container
LEASE_S = 60  # the longest finite lease Blob Storage grants: a dead machine's lease ends within a minute
RENEW_EVERY_S = 20  # three renewals a lease: one failed renewal (a network hiccup) does not lose it
POLL_S = 15  # how often a waiting run tries again
# the service's codes for "someone else holds it" (Lease Blob, REST reference: Blob service error codes)
HELD_ELSEWHERE = {"LeaseAlreadyPresent", "LeaseIsBreakingAndCannotBeAcquired"}
PERMISSION_MISSING = "AuthorizationPermissionMismatch"


class LeaseRoleMissing(Exception):
    """The storage account refused the lease for want of a data-plane role (403 AuthorizationPermissionMismatch)."""


def holder_metadata(run_id: str) -> dict[str, str]:
    return {"machine": socket.gethostname(), "run_id": run_id,
            "since": datetime.now(UTC).isoformat(timespec="seconds")}


def describe(metadata: dict[str, str]) -> str:
    """A holder as a waiter names it, from the blob's metadata."""
    if not metadata.get("run_id"):  # taken a moment ago, its metadata not yet written
        return "a run that has just taken it"
    return f"machine {metadata.get('machine', '?')}, run {metadata['run_id']}, since {metadata.get('since', '?')}"


def _error_code(error: HttpResponseError) -> str:
    return str(getattr(error, "error_code", "") or "")


def _acquire(blob: BlobClient, lease: BlobLeaseClient, lease_s: int) -> bool:
    """Take the lease (the blob made first if missing); False if another run holds it."""
    try:
        try:
            lease.acquire(lease_duration=lease_s)
        except ResourceNotFoundError:
            try:
                blob.upload_blob(b"", overwrite=False)
            except ResourceExistsError:  # another run made it meanwhile
                pass
            lease.acquire(lease_duration=lease_s)
    except HttpResponseError as error:
        if _error_code(error) in HELD_ELSEWHERE:
            return False
        if _error_code(error) == PERMISSION_MISSING:
            raise LeaseRoleMissing(str(error.message).splitlines()[0]) from None
        raise
    return True


def _holder(blob: BlobClient) -> str:
    try:
        return describe(blob.get_blob_properties().metadata or {})
    except ResourceNotFoundError:
        return "a run that has just released it"


def _renew_until(stop: threading.Event, lease: BlobLeaseClient, warn: Callable[[str], None], every_s: float) -> None:
    while not stop.wait(every_s):
        try:
            lease.renew()
        except HttpResponseError as error:
            warn(f"could not renew the workspace lease ({_error_code(error) or error.status_code}): if it has "
                 "been broken, another run may write to this workspace now")


@contextmanager
def held(blob: BlobClient, run_id: str, wait: bool, on_wait: Callable[[str], None], warn: Callable[[str], None],
         lease_s: int = LEASE_S, poll_s: float = POLL_S) -> Iterator[BlobLeaseClient]:
    """Hold the workspace's lease for the block, renewed in a thread. Another holder: with `wait`, say who
    (`on_wait`, again whenever the holder changes) and try again every `poll_s`; without, WorkspaceBusyError
    naming it. LeaseRoleMissing if the storage account refuses the signed-in principal."""
    lease = BlobLeaseClient(blob)
    said = None
    while not _acquire(blob, lease, lease_s):
        holder = _holder(blob)
        if not wait:
            raise WorkspaceBusyError.held_by(holder, where="'s Azure lease")
        if holder != said:
            on_wait(holder)
            said = holder
        time.sleep(poll_s)
    stop = threading.Event()
    renewer = threading.Thread(target=_renew_until, args=(stop, lease, warn, min(RENEW_EVERY_S, lease_s / 3)),
                               name="workspace-lease-renewal", daemon=True)
    try:
        blob.set_blob_metadata(holder_metadata(run_id), lease=lease)
        renewer.start()
        yield lease
    finally:
        stop.set()
        if renewer.is_alive():
            renewer.join()
        try:
            lease.release()
        except HttpResponseError as error:  # broken meanwhile, or the network is down: it ends on its own
            warn(f"could not release the workspace lease ({_error_code(error) or error.status_code}); it ends "
                 f"on its own within {lease_s} s")
