"""The private local folder both targets keep their files in (the local target: everything it makes;
the Azure target: what it prepares before upload), with its key, locks and atomic JSON files."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import uuid
from contextlib import contextmanager
from pathlib import Path

from phi3_pipeline.locks import run_lock

PRIVATE_DIR_MODE = 0o700
SECRET_FILE_MODE = 0o600


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write so that a reader never sees half a file, even if the writer is killed."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class Workspace:
    """Paths of the local workspace; the root is created owner-only (0700)."""

    def __init__(self, root: Path):
        self.root = root.expanduser().resolve()

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, PRIVATE_DIR_MODE)

    def dir(self, *parts: str) -> Path:
        self.ensure()
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def workspace_id(self) -> str:
        """A random id made once per workspace: results cached against a wiped workspace go stale."""
        path = self.root / "workspace_id"
        if not path.exists():
            self.ensure()
            try:
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:  # another run made it first: use theirs
                pass
            else:
                with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                    handle.write(uuid.uuid4().hex)
        return path.read_text(encoding="utf-8").strip()

    @property
    def key_file(self) -> Path:
        return self.root / "secrets" / "endpoint.key"

    def ensure_key(self) -> bool:
        """Make the endpoint key (256 random bits) in an owner-only file; True if it was made now."""
        if self.key_file.exists():
            os.chmod(self.key_file, SECRET_FILE_MODE)
            return False
        self.dir("secrets").chmod(PRIVATE_DIR_MODE)
        try:
            descriptor = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE)
        except FileExistsError:  # another run made it first
            return False
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_urlsafe(32))
        return True

    def read_key(self) -> str:
        return self.key_file.read_text(encoding="utf-8").strip()

    def key_fingerprint(self) -> str:
        """sha256 of the key: tells a server started with an older key apart, reveals nothing."""
        return hashlib.sha256(self.read_key().encode()).hexdigest()

    @contextmanager
    def lock(self, name: str):
        """An exclusive lock across processes, so two runs never submit or register the same thing twice."""
        with run_lock(self.dir("locks") / f"{name}.lock", wait=True, on_wait=lambda holder: None):
            yield
