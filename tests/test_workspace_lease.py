"""One writer per Azure workspace across machines (phi3_pipeline/targets/azure/workspace_lease.py): the blob lease
against a fake that follows Blob Storage's lease semantics (tests/storage_fakes.py), through the real
azure-storage-blob client; in this process, and from processes of their own as runs on two machines would be."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.storage.blob import BlobLeaseClient, BlobServiceClient

from phi3_pipeline.config.errors import ConfigError
from phi3_pipeline.locks import WorkspaceBusyError
from phi3_pipeline.targets.azure import workspace_lease
from phi3_pipeline.targets.azure.target import AzureTarget
from tests.azure_fakes import SIGNED_IN_OBJECT_ID, OfflineCredential, ScriptedTransport
from tests.conftest import ROOT
from tests.storage_fakes import ACCOUNT_HOST, FakeBlobStorage, serve_storage

CONTAINER = "azureml-blobstore"  # the fake workspace's default datastore's
LEASE_PATH = f"/{CONTAINER}/{workspace_lease.LEASE_BLOB}"
OTHER = {"machine": "build-agent-7", "run_id": "run-of-another-machine", "since": "2026-12-02T06:00:00+00:00"}


def blob_of(storage: FakeBlobStorage):
    service = BlobServiceClient(f"https://{ACCOUNT_HOST}", OfflineCredential(),
                                transport=ScriptedTransport(storage), retry_total=0)
    return service.get_blob_client(CONTAINER, workspace_lease.LEASE_BLOB)


def held_elsewhere(storage: FakeBlobStorage, seconds: int = 60) -> BlobLeaseClient:
    """The lease as another machine's run holds it, its metadata written."""
    blob = blob_of(storage)
    if LEASE_PATH not in storage.blobs:
        blob.upload_blob(b"", overwrite=False)
    lease = BlobLeaseClient(blob)
    lease.acquire(lease_duration=seconds)
    blob.set_blob_metadata(OTHER, lease=lease)
    return lease


def error_code(call) -> str:
    with pytest.raises(HttpResponseError) as refused:
        call()
    return refused.value.error_code


def test_workspace_lease_fake_follows_blob_storage_lease_semantics():
    """What the lease relies on, as the service defines it: one holder (409 LeaseAlreadyPresent), writes need the
    lease's id (412), renew and release by the holder only, expiry after the duration, break on purpose."""
    storage = FakeBlobStorage()
    blob = blob_of(storage)
    mine = held_elsewhere(storage, seconds=15)
    theirs = BlobLeaseClient(blob)
    with pytest.raises(ResourceExistsError) as held:
        theirs.acquire(lease_duration=15)
    assert held.value.error_code == "LeaseAlreadyPresent"
    assert error_code(lambda: blob.set_blob_metadata({"machine": "x"})) == "LeaseIdMissing"
    assert error_code(lambda: BlobLeaseClient(blob, lease_id="not-the-holder").renew()) == \
        "LeaseIdMismatchWithLeaseOperation"
    assert error_code(lambda: theirs.acquire(lease_duration=61)) == "InvalidHeaderValue"
    mine.renew()
    properties = blob.get_blob_properties()
    assert (properties.lease.state, properties.lease.status, properties.lease.duration) == ("leased", "locked", "fixed")
    assert properties.metadata == OTHER

    storage.advance(16)  # the holder's machine died: nobody renews
    assert blob.get_blob_properties().lease.state == "expired"
    theirs.acquire(lease_duration=15)
    assert error_code(mine.renew) == "LeaseIdMismatchWithLeaseOperation", "a lease taken over is lost for good"

    assert theirs.break_lease(lease_break_period=10) == 10
    assert blob.get_blob_properties().lease.state == "breaking"
    assert error_code(lambda: mine.acquire(lease_duration=15)) == "LeaseIsBreakingAndCannotBeAcquired"
    storage.advance(10)
    assert blob.get_blob_properties().lease.state == "broken"
    assert error_code(theirs.renew) == "LeaseIsBrokenAndCannotBeRenewed"
    mine.acquire(lease_duration=15)
    released = mine.id
    mine.release()
    assert blob.get_blob_properties().lease.state == "available"
    assert error_code(BlobLeaseClient(blob, lease_id=released).release) == "LeaseNotPresentWithLeaseOperation"
    assert error_code(lambda: theirs.break_lease()) == "LeaseNotPresentWithLeaseOperation"


def test_workspace_lease_held_names_itself_and_a_second_holder_without_wait_fails_naming_it():
    storage = FakeBlobStorage()
    warnings = []
    with workspace_lease.held(blob_of(storage), "run-1", False, print, warnings.append):
        metadata = blob_of(storage).get_blob_properties().metadata
        assert metadata["run_id"] == "run-1" and metadata["machine"] == socket.gethostname()
        with pytest.raises(WorkspaceBusyError) as busy, \
                workspace_lease.held(blob_of(storage), "run-2", False, print, warnings.append):
            pass
    assert str(busy.value).startswith(f"another run holds this workspace's Azure lease (machine {socket.gethostname()}"
                                      f", run run-1, since {metadata['since']}); run again when it ends, or leave "
                                      "out --no-wait")
    assert blob_of(storage).get_blob_properties().lease.state == "available", "released at the end"
    assert warnings == []


def test_workspace_lease_a_waiting_run_names_the_holder_once_and_takes_the_lease_when_it_runs_out(monkeypatch):
    storage = FakeBlobStorage()
    held_elsewhere(storage)
    waited_for = []

    def waiting(holder: str) -> None:
        waited_for.append(holder)
        storage.advance(61)  # the other machine died while this run waited: its lease runs out

    with workspace_lease.held(blob_of(storage), "run-1", True, waiting, print, poll_s=0.01):
        assert blob_of(storage).get_blob_properties().metadata["run_id"] == "run-1"
    assert waited_for == ["machine build-agent-7, run run-of-another-machine, since 2026-12-02T06:00:00+00:00"]


def test_workspace_lease_renewed_while_held_and_a_broken_lease_is_a_warning(monkeypatch):
    monkeypatch.setattr(workspace_lease, "RENEW_EVERY_S", 0.05)
    storage = FakeBlobStorage()
    warnings = []
    with workspace_lease.held(blob_of(storage), "run-1", False, print, warnings.append, lease_s=15) as lease:
        time.sleep(0.3)
        assert [action for _, _, action in storage.requests].count("renew") >= 2
        storage.advance(14)
        time.sleep(0.3)
        assert blob_of(storage).get_blob_properties().lease.state == "leased", "renewed: still held past 15 s"
        BlobLeaseClient(blob_of(storage), lease_id=lease.id).break_lease(lease_break_period=0)  # on purpose
        time.sleep(0.3)
    assert warnings and warnings[0].startswith("could not renew the workspace lease (LeaseIsBrokenAndCannotBeRenewed)")
    assert "another run may write" in warnings[0]


def _role_granted(arm) -> bool:
    return any(body["properties"].get("principalId") == SIGNED_IN_OBJECT_ID
               and body["properties"]["roleDefinitionId"].endswith("/storage-blob-data-contributor")
               for path, body in arm.resources.items() if "/roleAssignments/" in path)


def test_workspace_lease_without_its_role_grants_it_to_you_and_then_takes_the_lease(azure_cloud, azure_settings):
    azure_cloud.storage.authorized = lambda: _role_granted(azure_cloud.arm)
    with AzureTarget(azure_settings, run_id="run-1").workspace_lease(False, print, print):
        assert azure_cloud.storage.blobs[LEASE_PATH].metadata["run_id"] == "run-1"
    assert _role_granted(azure_cloud.arm)
    assert azure_cloud.storage.state(azure_cloud.storage.blobs[LEASE_PATH]) == "available"


def test_workspace_lease_role_that_cannot_be_granted_or_does_not_help_is_one_line_naming_it(azure_cloud,
                                                                                         azure_settings):
    storage, arm = azure_cloud.storage, azure_cloud.arm
    storage.authorized = lambda: False
    arm.inject("PUT", "/roleAssignments/", (403, {"error": {
        "code": "AuthorizationFailed", "message": "does not have authorization to perform action "
                                                  "'Microsoft.Authorization/roleAssignments/write'"}}))
    with pytest.raises(ConfigError) as refused, AzureTarget(azure_settings).workspace_lease(False, print, print):
        pass
    assert str(refused.value) == (
        "the workspace lease needs the role Storage Blob Data Contributor on storage account wsstorage for the "
        "signed-in principal, and Azure refused to grant it: ask an Owner of the storage account to grant it")
    target = AzureTarget(azure_settings)
    assert target._ensure_lease_role("wsstorage").created
    with pytest.raises(ConfigError, match="Azure refused the lease although the role is held"), \
            target.workspace_lease(False, print, print):  # held, and still refused: a deny assignment, a firewall
        pass


def test_workspace_lease_role_granted_now_is_tried_again_while_it_takes_effect(azure_cloud, azure_settings):
    storage, arm = azure_cloud.storage, azure_cloud.arm
    refusals = iter([True, True])
    storage.authorized = lambda: _role_granted(arm) and not next(refusals, False)  # Azure takes a while to apply it
    with AzureTarget(azure_settings).workspace_lease(False, print, print):
        assert storage.state(storage.blobs[LEASE_PATH]) == "leased"
    storage.authorized = lambda: False
    arm.resources = {path: body for path, body in arm.resources.items() if "/roleAssignments/" not in path}
    settings = azure_settings.model_copy(update={"azure": azure_settings.azure.model_copy(
        update={"role_propagation_s": 1})})
    with pytest.raises(ConfigError) as late, AzureTarget(settings).workspace_lease(False, print, print):
        pass
    assert str(late.value) == ("Storage Blob Data Contributor on storage account wsstorage was granted to you just "
                               "now and had not taken effect after 1 s: run again in a few minutes")


def test_workspace_lease_a_pipeline_run_holds_it_while_it_writes_and_a_second_machine_without_wait_writes_nothing(
        prefect_api, azure_settings, azure_cloud, monkeypatch):
    from flows.full_pipeline import full_pipeline
    from tests.azure_fakes import scoring_stub

    storage, arm, transport = azure_cloud.storage, azure_cloud.arm, azure_cloud.transport
    seen_while_deploying = []
    deploy = AzureTarget.deploy

    def deploy_and_look(target, model):
        blob = storage.blobs[LEASE_PATH]
        seen_while_deploying.append((storage.state(blob), dict(blob.metadata), target.run_id))
        return deploy(target, model)

    monkeypatch.setattr(AzureTarget, "deploy", deploy_and_look)
    with scoring_stub("Bill Gates and Paul Allen.") as (scoring_uri, _, _):
        arm.scoring_uri = scoring_uri
        arm.job_states = ["Running", "Completed"]
        result = full_pipeline(azure_settings)
    ((state, holder, flow_run_id),) = seen_while_deploying
    assert state == "leased" and holder["machine"] == socket.gethostname() and result["model_version"] == 1
    assert holder["run_id"] == flow_run_id != "cli", "named by its flow run"
    assert storage.state(storage.blobs[LEASE_PATH]) == "available", "released when the run ended"

    held_elsewhere(storage)
    writes = len(transport.calls("PUT")) + len(transport.calls("DELETE"))
    with pytest.raises(WorkspaceBusyError, match=r"Azure lease \(machine build-agent-7, run run-of-another-machine, "
                                                 r"since 2026-12-02T06:00:00\+00:00\)"):
        full_pipeline(azure_settings.model_copy(update={"wait": False}))
    assert len(transport.calls("PUT")) + len(transport.calls("DELETE")) == writes, "nothing written, nothing removed"


def test_workspace_lease_plan_shows_the_role_it_needs(azure_cloud, azure_settings):
    from phi3_pipeline.chat_data.split_files import split_and_write

    target = AzureTarget(azure_settings)
    split = split_and_write(target.settings.dataset, target.scratch_dir())
    lines = {item.resource: item for item in target.plan(split, target.job_name(split.content_hash))}
    line = lines["role Storage Blob Data Contributor on wsstorage for you"]
    assert line.action == "get or create" and "workspace lease" in line.detail
    assert azure_cloud.storage.requests == [], "a plan takes no lease"


# A run on a machine of its own: it holds the workspace lease (through a `serve_storage` server) until killed.
HOLDER = textwrap.dedent("""
    import sys, time
    from azure.storage.blob import BlobServiceClient
    from phi3_pipeline.locks import WorkspaceBusyError
    from phi3_pipeline.targets.azure import workspace_lease
    from tests.azure_fakes import OfflineCredential
    from tests.storage_fakes import ACCOUNT_HOST, ForwardingTransport

    url, run_id, wait = sys.argv[1], sys.argv[2], sys.argv[3] == "wait"
    service = BlobServiceClient(f"https://{ACCOUNT_HOST}", OfflineCredential(), transport=ForwardingTransport(url))
    blob = service.get_blob_client("azureml-blobstore", workspace_lease.LEASE_BLOB)
    try:
        with workspace_lease.held(blob, run_id, wait, lambda holder: print("waiting for", holder, flush=True),
                                  lambda warning: print("warning:", warning, flush=True), lease_s=15, poll_s=0.5):
            print("holding", flush=True)
            time.sleep(600)
    except WorkspaceBusyError as busy:
        print(f"error: {busy}", file=sys.stderr)
        sys.exit(2)
""")


@pytest.mark.system
def test_workspace_lease_two_processes_one_writer_the_other_names_it_and_a_killed_holders_lease_runs_out():
    storage = FakeBlobStorage()
    with serve_storage(storage) as url:
        def run(run_id: str, wait: bool) -> subprocess.Popen:
            return subprocess.Popen([sys.executable, "-c", HOLDER, url, run_id, "wait" if wait else "no-wait"],
                                    cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})

        first = run("first-run", wait=False)
        processes = [first]
        try:
            assert first.stdout.readline().strip() == "holding"
            refused = run("second-run", wait=False)
            processes.append(refused)
            assert refused.wait(60) == 2
            (error,) = refused.stderr.read().strip().splitlines()
            assert error.startswith("error: another run holds this workspace's Azure lease (machine "
                                    f"{socket.gethostname()}, run first-run, since ")

            waiter = run("third-run", wait=True)
            processes.append(waiter)
            assert waiter.stdout.readline().startswith("waiting for machine ")
            os.killpg(first.pid, signal.SIGKILL)  # its machine dies: nobody renews, nobody releases
            killed = time.monotonic()
            assert waiter.stdout.readline().strip() == "holding"
            assert time.monotonic() - killed < 15 + 5, "taken once the dead holder's 15 s lease ran out"
            assert json.dumps(storage.blobs[LEASE_PATH].metadata).count("third-run") == 1
        finally:
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
