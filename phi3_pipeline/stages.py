"""The pipeline's stages: one name each (the Prefect task's, the run summary's, the README's, and the one an
Azure error names). A library fact, so that the targets, which never import Prefect, name stages the same way."""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    """In the tutorial's order; the value is the name the run summary shows."""

    LIVE_MODEL = "live model"
    QUOTA = "quota check"
    IDENTITY = "identity and RBAC"
    DATASET = "dataset"
    FINE_TUNE = "fine-tune"
    REGISTER = "register"
    DEPLOY = "deploy"
    GATE = "evaluation gate"
    GO_LIVE = "go live"
    CONNECTION = "connection"
    SMOKE_CHAT = "smoke chat"
    TEARDOWN = "teardown"

    @property
    def task_name(self) -> str:
        """The Prefect task's name: the same words, as Prefect names things."""
        return self.value.lower().replace(" ", "-")
