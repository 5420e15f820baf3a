"""Every Prefect internal the command line relies on (`phi3_pipeline.cli.prefect_internals`) is still there, and
a command falls back to Prefect's own temporary server, with one warning, when its own cannot be had."""

from __future__ import annotations

import inspect
import os
from importlib import import_module
from importlib.metadata import version

import pytest

from phi3_pipeline.cli import prefect_api, prefect_internals
from phi3_pipeline.cli.prefect_api import prefect_api_dying_with_this_process

UPGRADE = "Prefect changed what phi3_pipeline/cli/prefect_internals.py relies on; re-read it for this release"


def test_the_installed_prefect_is_the_tested_one():
    assert version("prefect") in prefect_internals.TESTED_PREFECT, (
        f"Prefect {version('prefect')} is installed: check every internal in prefect_internals.py against it, "
        "then widen TESTED_PREFECT")


def test_the_app_factory_takes_the_arguments_given():
    module, name = prefect_internals.APP_FACTORY.split(":")
    factory = getattr(import_module(module), name, None)
    assert callable(factory), f"{UPGRADE}: {prefect_internals.APP_FACTORY} is gone"
    parameters = inspect.signature(factory).parameters
    assert set(prefect_internals.APP_FACTORY_ARGUMENTS) <= set(parameters), f"{UPGRADE}: {parameters}"


def test_prefects_own_temporary_server_is_made_the_same_way():
    from prefect.server.api.server import SubprocessASGIServer

    source = inspect.getsource(SubprocessASGIServer)
    for variable, value in prefect_internals.TEMPORARY_SERVER_ENV.items():
        assert f'"{variable}": "{value}"' in source, f"{UPGRADE}: its temporary server no longer sets {variable}"
    for argument in prefect_internals.APP_FACTORY_ARGUMENTS:
        assert f"PREFECT__SERVER_{argument.upper()}" in source, f"{UPGRADE}: its temporary server is not {argument}"


def test_the_log_and_event_workers_can_be_drained():
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        assert "timeout" in inspect.signature(worker.drain_all).parameters, f"{UPGRADE}: {worker.__name__}"
    prefect_internals.drain_to_the_server(timeout_s=1)  # nothing to send: returns at once


@pytest.fixture
def no_prefect_api(monkeypatch, tmp_path):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    with temporary_settings({PREFECT_HOME: tmp_path / "prefect"}, restore_defaults={PREFECT_API_URL}):
        yield tmp_path / "prefect"


def test_an_untested_prefect_falls_back_to_prefects_own_server_with_a_warning(no_prefect_api, monkeypatch, capsys):
    monkeypatch.setattr(prefect_api, "prefect_is_tested", lambda: False)
    checked = []
    with prefect_api_dying_with_this_process(lambda: checked.append(True)):
        assert "PREFECT_API_URL" not in os.environ  # Prefect starts its own when the flow runs
    warning = capsys.readouterr().err.strip().splitlines()
    assert checked == [True] and len(warning) == 1
    assert warning[0].startswith("warning: Prefect ") and "outside the releases this was tested with" in warning[0]


def test_a_server_that_does_not_start_is_named_with_its_log_and_the_run_falls_back(no_prefect_api, monkeypatch,
                                                                                   capsys):
    monkeypatch.setattr(prefect_api, "SERVER_MODULE", "phi3_pipeline.no_such_module")
    with prefect_api_dying_with_this_process():
        assert "PREFECT_API_URL" not in os.environ
    warning = capsys.readouterr().err.strip().splitlines()
    log_file = no_prefect_api / prefect_api.SERVER_LOG
    assert len(warning) == 1 and warning[0].startswith("warning: the Prefect API server ended with exit code 1")
    assert str(log_file) in warning[0]
    assert "No module named phi3_pipeline.no_such_module" in log_file.read_text()
