"""The one lock helper: a pipeline or teardown run holds its workspace's run lock from start to end, and the
local target holds a named lock around what two runs must never do twice (submit a job, register a version).

The lock is an flock on a file in the local workspace, so the kernel releases it when the holder dies, even
by SIGKILL: a stale lock is simply taken over. Beside it a small file names the holder (pid, start time) for
the message of whoever waits. The lock is re-entrant within a thread, so the teardown subflow of a pipeline
run (which Prefect runs in the same thread) does not wait for its own run; another thread is another run.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from phi3_pipeline.config.errors import PipelineError

_held = threading.local()  # .files: the lock files this thread holds
_private_prefect_apis: set[str] = set()  # the Prefect API servers this process started for its own runs


class WorkspaceBusyError(PipelineError):
    """Another run holds the workspace and this one was asked not to wait."""

    @classmethod
    def held_by(cls, holder: str, where: str = "") -> WorkspaceBusyError:
        """The one wording of every layer's refusal (this lock, the Prefect slot, the Azure lease)."""
        return cls(f"another run holds this workspace{where} ({holder}); run again when it ends, "
                   "or leave out --no-wait to wait for it")


def _holder(info_file: Path) -> str:
    try:
        return info_file.read_text(encoding="utf-8").strip() or "unknown"
    except FileNotFoundError:
        return "unknown"


@contextmanager
def run_lock(lock_file: Path, wait: bool, on_wait: Callable[[str], None]) -> Iterator[bool]:
    """Hold the workspace's run lock for the block; yields True if this call took it (False: this thread
    held it already). Another holder: with `wait`, say who (`on_wait`) and wait for it; without, fail at once
    naming it."""
    lock_file = lock_file.resolve()
    held: set[Path] = _held.__dict__.setdefault("files", set())
    if lock_file in held:
        yield False
        return
    info_file = lock_file.with_suffix(".holder")
    with lock_file.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(info_file)
            if not wait:
                raise WorkspaceBusyError.held_by(holder) from None
            on_wait(holder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        info_file.write_text(f"pid {os.getpid()}, started {datetime.now(UTC).isoformat(timespec='seconds')}",
                             encoding="utf-8")
        held.add(lock_file)
        try:
            yield True
        finally:
            held.discard(lock_file)
            info_file.unlink(missing_ok=True)
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def private_prefect_api(url: str) -> Iterator[None]:
    """Mark, for the block, the Prefect API at `url` as this process's own (a command's temporary server, which
    serves no other run and dies with this one): runs under it take no slot there (tasks/workspace_slot.py)."""
    _private_prefect_apis.add(url)
    try:
        yield
    finally:
        _private_prefect_apis.discard(url)


def is_private_prefect_api(url: str) -> bool:
    return url in _private_prefect_apis
