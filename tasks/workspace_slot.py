"""One writer per workspace across machines that share a Prefect server: a Prefect global concurrency limit
named after the workspace, with one slot.

The run lock (phi3_pipeline/locks.py) is a kernel lock, so it holds on one machine only. Runs that go through one
Prefect server (its deployments, workers on several machines, a laptop pointed at it) also take this slot, and
the UI shows who waits. It is held under a lease that Prefect renews while the run lives: a run that crashes, or
whose machine dies, frees it when the lease runs out (LEASE_S). The holder tags its flow run with the limit's
name, which is how a waiter names it.

Prefect keeps the slot count in its database and, by default, the leases in the server's memory: a server that
restarts while a slot is held would forget the lease and keep the slot taken for good. The project's prefect.toml
therefore keeps leases on disk (`server.concurrency.lease_storage`), where a restarted server finds them and
frees those that have run out. A command's own temporary server (cli/prefect_api.py) is nobody else's and dies
with the run, so runs under it take no slot: the run lock covers their one machine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import ConcurrencyLeaseHolder, StateType
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound

from phi3_pipeline.locks import WorkspaceBusyError, is_private_prefect_api

# how long a run's slot outlives the run when it stops renewing it (a crash, a dead machine): Prefect's minimum
LEASE_S = 60
# how long a first try for the slot may take before the run is said to wait (or, with --no-wait, fails)
FIRST_TRY_S = 3


def on_a_shared_server() -> bool:
    """Whether this run's Prefect API is a server other runs may share: neither Prefect's in-process ephemeral API
    nor a command's temporary server."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return bool(url) and not is_private_prefect_api(url)


def limit_name(workspace_key: str) -> str:
    return f"phi3-workspace-{workspace_key}"


def _ensure_limit(name: str) -> None:
    """The limit, made with one slot when it is missing (Prefect would otherwise make an inactive one, which
    limits nothing)."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


def holders(name: str, besides: UUID | None) -> str:
    """The running flow runs tagged with the limit's name, other than `besides`: name, id and since when."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[name]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])),
            id=FlowRunFilterId(not_any_=[besides]) if besides else None))
    return "; ".join(f"flow run {run.name!r} ({run.id}), running since "
                     f"{run.start_time.isoformat(timespec='seconds') if run.start_time else 'unknown'}"
                     for run in runs) or "a run whose flow run could not be read"


def _tag_as_holder(flow_run_id: UUID, name: str) -> None:
    with get_client(sync_client=True) as client:
        tags = client.read_flow_run(flow_run_id).tags
        if name not in tags:
            client.update_flow_run(flow_run_id, tags=[*tags, name])


@contextmanager
def workspace_slot(workspace_key: str, flow_run_id: UUID, wait: bool,
                   on_wait: Callable[[str], None]) -> Iterator[None]:
    """Hold the workspace's slot for the block. Another holder: with `wait`, say who (`on_wait`) and wait for
    it (the run's log in the UI says so); without, fail at once naming it. A renewal of the lease that fails
    once does not stop the run (a fine-tune is not killed for a server's hiccup)."""
    name = limit_name(workspace_key)
    _ensure_limit(name)
    holder = ConcurrencyLeaseHolder(type="flow_run", id=flow_run_id)
    held = dict(names=name, occupy=1, lease_duration=LEASE_S, strict=True, holder=holder,
                raise_on_lease_renewal_failure=False)
    with ExitStack() as slot:
        try:
            slot.enter_context(concurrency(**held, timeout_seconds=FIRST_TRY_S))
        except TimeoutError:  # Prefect's AcquireConcurrencySlotTimeoutError
            holder_now = holders(name, besides=flow_run_id)
            if not wait:
                raise WorkspaceBusyError.held_by(holder_now, where=" on the Prefect server") from None
            on_wait(holder_now)
            slot.enter_context(concurrency(**held, timeout_seconds=None))
        _tag_as_holder(flow_run_id, name)
        yield
