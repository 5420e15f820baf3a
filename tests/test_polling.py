"""Prefect-side stage logic: the fine-tune poller (backoff, progress, failures), the loss check, retries."""

from __future__ import annotations

import time
import types

import pytest
import requests
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

import tasks.finetune as finetune
from phi3_pipeline.config.errors import ConfigError, JobFailedError, TransientError
from phi3_pipeline.config.settings import PipelineSettings
from phi3_pipeline.targets.azure.target import AzureTarget
from phi3_pipeline.targets.base import DatasetRef, JobRef, JobStatus
from tasks.retries import stage_retries


class ScriptedJob:
    """A target whose job reports the given states, one per poll."""

    first_poll_interval_s = 0.5
    max_poll_interval_s = 2.0

    def __init__(self, states: list[JobStatus]):
        self.states = states
        self.polls = 0

    def job_status(self, name: str) -> JobStatus:
        status = self.states[min(self.polls, len(self.states) - 1)]
        self.polls += 1
        return status


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """Record the poller's waits instead of sleeping."""
    recorded: list[float] = []
    monkeypatch.setattr(finetune, "time", types.SimpleNamespace(monotonic=time.monotonic, sleep=recorded.append))
    return recorded


def run_poll(target: ScriptedJob, timeout_s: float = 3600) -> JobStatus:
    """The poll in a flow, on the session's Prefect test harness (the tests ask for `prefect_api`)."""
    @flow(name="poll-test")
    def poll_flow() -> JobStatus:
        return finetune.poll_job(target, "job-x", timeout_s)

    return poll_flow()


def test_poll_backs_off_to_the_cap_and_reports_progress(prefect_api, sleeps):
    running = [JobStatus(state="Running", step=step, total_steps=10, loss=2.0 / step, phase="fine-tune")
               for step in range(1, 10)]
    target = ScriptedJob(running + [JobStatus(state="Completed", step=10, total_steps=10)])
    assert run_poll(target).state == "Completed"
    assert target.polls == 10
    assert sleeps[0] == target.first_poll_interval_s
    assert sleeps == sorted(sleeps) and max(sleeps) == target.max_poll_interval_s
    artifacts = requests.post(f"{prefect_api}/artifacts/filter", timeout=10, json={
        "artifacts": {"key": {"any_": ["fine-tune-progress"]}}, "sort": "CREATED_DESC", "limit": 1}).json()
    assert artifacts[0]["data"] == 100.0
    assert "step 10/10" in artifacts[0]["description"]


class AzureLengthJob:
    """A job that runs `hours` on a simulated clock, polled at the Azure target's cadence."""

    first_poll_interval_s = AzureTarget.first_poll_interval_s
    max_poll_interval_s = AzureTarget.max_poll_interval_s

    def __init__(self, hours: float):
        self.ends_at = hours * 3600
        self.now = 0.0
        self.calls: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def job_status(self, name: str) -> JobStatus:
        self.calls.append(self.now)
        return JobStatus(state="Completed" if self.now >= self.ends_at else "Running")


def test_azure_jobs_get_at_most_60_status_calls_an_hour_and_completion_is_seen_within_a_minute(
        prefect_api, monkeypatch):
    job = AzureLengthJob(hours=2.51)
    monkeypatch.setattr(finetune, "time", types.SimpleNamespace(monotonic=lambda: job.now, sleep=job.sleep))
    assert run_poll(job, timeout_s=6 * 3600).state == "Completed"
    calls_per_hour = [sum(1 for t in job.calls if hour * 3600 <= t < (hour + 1) * 3600) for hour in range(3)]
    assert max(calls_per_hour) <= 60
    assert job.calls[-1] - job.ends_at <= 60


def test_a_failed_job_ends_the_poll_with_its_state(prefect_api, sleeps):
    target = ScriptedJob([JobStatus(state="Running"), JobStatus(state="Failed", error="CUDA out of memory")])
    status = run_poll(target)
    assert (status.state, status.error) == ("Failed", "CUDA out of memory")


def test_a_job_past_its_time_limit_is_left_running_with_a_clear_error(prefect_api, sleeps):
    target = ScriptedJob([JobStatus(state="Running")])
    with pytest.raises(JobFailedError, match="re-run the pipeline to adopt it"):
        run_poll(target, timeout_s=0)


class JobThatDidNotLearn(ScriptedJob):
    def __init__(self):
        super().__init__([JobStatus(state="Completed", step=4, total_steps=4)])

    def find_or_submit_job(self, name, dataset):
        return False

    def job_name(self, data_hash):
        return "phi3-custom-ft-did-not-learn"

    def job_result(self, name):
        return JobRef(name=name, created=False, metrics={"train_loss_first": 2.0, "train_loss_last": 2.5})


def test_a_job_whose_loss_did_not_go_down_is_not_registered(prefect_api, monkeypatch, tmp_path):
    monkeypatch.setattr(finetune, "stage_target", lambda settings: JobThatDidNotLearn())
    settings = PipelineSettings(local={"workspace_dir": tmp_path})
    dataset = DatasetRef(content_hash="c" * 64, train_uri="t", test_uri="v", train_rows=1, test_rows=1, created=True)

    @flow(name="fine-tune-test")
    def finetune_flow():
        return finetune.fine_tune.with_options(cache_policy=NO_CACHE)(settings, dataset)

    with pytest.raises(JobFailedError, match="did not learn"):
        finetune_flow()


def test_prefect_retries_transient_errors_only(prefect_api):
    attempts = {"transient": 0, "permanent": 0}

    @task(**stage_retries())
    def flaky(kind: str) -> str:
        attempts[kind] += 1
        if kind == "transient" and attempts[kind] == 1:
            raise TransientError("server still starting")
        if kind == "permanent":
            raise ConfigError("bad value")
        return "ok"

    @flow(name="retry-test")
    def retry_flow():
        return flaky("transient"), flaky("permanent", return_state=True).is_failed()

    assert retry_flow() == ("ok", True)
    assert attempts == {"transient": 2, "permanent": 1}
