"""Every part of Prefect that is not its public API and that the command line relies on, in one place.

Each is checked by `tests/test_prefect_internals.py`, which fails naming the part when an upgrade changes it.
Outside `TESTED_PREFECT` the command line uses none of them: it leaves the API server to Prefect.
"""

from __future__ import annotations

from importlib.metadata import version

from packaging.specifiers import SpecifierSet

# The Prefect releases these parts were read from (pyproject pins 3.8.8).
TESTED_PREFECT = SpecifierSet(">=3.8.8,<3.9")

# How Prefect's own temporary API server is made (`SubprocessASGIServer`, 3.8): its app factory
# `prefect.server.api.server.create_app`, as an ephemeral app (the server's background services run in it) and
# the final one (its start-up clean-up too), with the UI off (the public setting `ui.enabled`).
APP_FACTORY = "prefect.server.api.server:create_app"
APP_FACTORY_ARGUMENTS = {"ephemeral": True, "final": True}
TEMPORARY_SERVER_ENV = {"PREFECT_UI_ENABLED": "0"}


def prefect_is_tested() -> bool:
    return version("prefect") in TESTED_PREFECT


def drain_to_the_server(timeout_s: float) -> None:
    """Send what this process logged and emitted to the API before its server stops (Prefect's temporary server
    does the same as it stops: `prefect.logging.handlers.APILogWorker`, `prefect.events.worker.EventsWorker`)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout_s)
    EventsWorker.drain_all(timeout=timeout_s)
