"""Base models named by Hugging Face Hub id on the local target (phi3_pipeline/targets/local/hub.py): resolved to a
commit that names the job, read from the cache offline, refused in one line when missing, gated or too large."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import pytest

from phi3_pipeline.config.errors import ConfigError, InsufficientResourcesError
from phi3_pipeline.config.settings import PipelineSettings
from phi3_pipeline.targets.base import raise_if_short
from phi3_pipeline.targets.local import hub
from phi3_pipeline.targets.local.target import LocalTarget
from tests.conftest import run_cli
from tests.hub_fakes import FIRST_COMMIT, REPO_ID, SECOND_COMMIT, cache_snapshot, fake_hub, make_checkpoint, model_info


def gated(repo_id: str) -> tuple[int, dict, dict]:
    """A gated model as the Hub shows it to anyone: its info, with `gated`; its auth check and files refuse."""
    return model_info(repo_id, FIRST_COMMIT, 2**20, gated="manual")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("hub-checkpoint"))


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, offline (as `HF_HUB_OFFLINE=1` sets it)."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def online_at(url: str, monkeypatch) -> None:
    """Online, with `url` as the Hub: what HF_ENDPOINT sets when huggingface_hub is imported (its API's endpoint
    and its file URLs)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", url)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        url + "/{repo_id}/resolve/{revision}/{filename}")


def target_for(tmp_path: Path, revision: str = "") -> LocalTarget:
    return LocalTarget(PipelineSettings(local={"workspace_dir": tmp_path / "ws"},
                                        training={"base_model": REPO_ID, "base_model_revision": revision}))


def test_hub_id_offline_is_read_from_the_cache_and_its_commit_names_the_job(hf_cache, checkpoint, tmp_path):
    first = cache_snapshot(hf_cache, checkpoint, FIRST_COMMIT)
    model = hub.resolve(REPO_ID)
    assert (model.commit, model.snapshot) == (FIRST_COMMIT, first)
    assert model.weight_bytes == (checkpoint / "model.safetensors").stat().st_size
    first_job = target_for(tmp_path).job_name("data")

    cache_snapshot(hf_cache, checkpoint, SECOND_COMMIT)  # upstream moved main: the next run trains anew
    assert hub.resolve(REPO_ID).commit == SECOND_COMMIT
    assert target_for(tmp_path).job_name("data") != first_job
    assert target_for(tmp_path, revision=FIRST_COMMIT).job_name("data") == first_job, "a pinned commit never does"


@pytest.mark.parametrize("revision, expected", [
    ("", "training.base_model nobody/absent is not in the Hugging Face cache"),
    ("v9", "(training.base_model_revision v9) is not in the Hugging Face cache"),
])
def test_hub_id_not_in_the_cache_offline_says_what_to_download(hf_cache, revision, expected):
    with pytest.raises(ConfigError) as refused:
        hub.resolve("nobody/absent", revision)
    assert expected in str(refused.value) and "HF_HUB_OFFLINE is set" in str(refused.value)
    assert f"`hf download nobody/absent{' --revision v9' if revision else ''}`" in str(refused.value)


@pytest.mark.parametrize("repo_id, expected", [
    ("org/gated-model", "training.base_model org/gated-model is gated: accept its terms at"),
    ("org/no-such-model", "training.base_model org/no-such-model is not on the Hugging Face Hub"),
    ("org/bin-only", "training.base_model org/bin-only has no safetensors weights on the Hugging Face Hub"),
])
def test_hub_id_gated_or_missing_on_the_hub_is_one_config_error(hf_cache, monkeypatch, repo_id, expected):
    bin_only = (200, {}, {"id": "org/bin-only", "sha": FIRST_COMMIT,
                          "siblings": [{"rfilename": "pytorch_model.bin", "size": 2**30}]})
    with fake_hub({"org/gated-model": gated("org/gated-model"), "org/bin-only": bin_only}) as url:
        online_at(url, monkeypatch)
        with pytest.raises(ConfigError, match=expected):
            hub.resolve(repo_id)


def test_hub_id_gated_with_access_is_accepted(hf_cache, monkeypatch):
    with fake_hub({"org/gated-model": gated("org/gated-model")}, granted={"org/gated-model"}) as url:
        online_at(url, monkeypatch)
        assert hub.resolve("org/gated-model").identity == f"org/gated-model@{FIRST_COMMIT}"


@pytest.mark.parametrize("repo_id, expected", [
    ("org/gated-model", "training.base_model org/gated-model is gated: accept its terms at"),
    ("org/deleted-model", "training.base_model org/deleted-model is not on the Hugging Face Hub"),
])
def test_hub_id_refused_at_download_time_is_one_config_error_not_retried(hf_cache, monkeypatch, repo_id,
                                                                         expected):
    """Access lost (or the model deleted) between resolve and the fine-tune's download: the Hub's refusal is a
    ConfigError, not a TransientError to retry."""
    with fake_hub({"org/gated-model": gated("org/gated-model")}) as url:
        online_at(url, monkeypatch)
        with pytest.raises(ConfigError, match=expected):
            hub.download(hub.HubModel(repo_id, FIRST_COMMIT, 2**20, None))


def test_hub_id_is_sized_from_the_hub_before_any_download_and_refused_when_it_does_not_fit(
        hf_cache, monkeypatch, tmp_path):
    with fake_hub({REPO_ID: model_info(REPO_ID, SECOND_COMMIT, 400 * 2**30)}) as url:
        online_at(url, monkeypatch)
        target = target_for(tmp_path)
        assert target.job_inputs()["base_model"] == f"{REPO_ID}@{SECOND_COMMIT}"
        checks = target.check_resources()
        with pytest.raises(InsufficientResourcesError, match="memory"):
            raise_if_short(checks)
    cache_check = next(check for check in checks if check.resource.endswith("(the Hugging Face cache)"))
    assert str(hf_cache) in cache_check.resource and cache_check.needed == 400.1, "the download's own disk"
    workspace_check = next(check for check in checks if check.resource.startswith("disk at"))
    assert "served base + adapter (the merged copies would need 800.0 GiB more)" in workspace_check.resource
    assert workspace_check.needed == 400.3, "an adapter is megabytes, but the download shares the workspace's disk"
    assert list(hf_cache.iterdir()) == [], "nothing was downloaded"


def test_hub_id_settings_a_revision_belongs_to_a_hub_model_and_an_existing_folder_is_a_folder(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="training.base_model_revision is for a Hugging Face Hub base_model"):
        PipelineSettings(training={"base_model": "phi3-builtin-tiny", "base_model_revision": "main"})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "mine").mkdir(parents=True)  # "models/mine" looks like org/name, but is a folder here
    with pytest.raises(ValueError, match="local Hugging Face checkpoint folder with a config.json"):
        PipelineSettings(training={"base_model": "models/mine"})


@pytest.mark.system
def test_hub_id_whole_pipeline_offline_from_the_cache_then_a_new_commit_trains_anew(
        prefect_server, checkpoint, tmp_path):
    """The pipeline by Hub id with no network: trained from the cache's snapshot, served and chatted with; the
    same commit re-run trains nothing, a new commit on main trains anew, and a pinned commit never does."""
    cache = tmp_path / "hf-cache"
    first = cache_snapshot(cache, checkpoint, FIRST_COMMIT)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PHI3_LOCAL__WORKSPACE_DIR": str(tmp_path / "ws")}
    args = ["--training.base_model", REPO_ID, "--training.epochs", "1", "--dataset.sample_size", "200"]

    def run(*extra: str) -> set[Path]:
        result = run_cli("flows.full_pipeline", *args, *extra, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert any(line.startswith("A: ") for line in result.stdout.splitlines()), result.stdout
        return set((tmp_path / "ws" / "jobs").glob("*/spec.json"))

    try:
        jobs = run()
        assert [json.loads(spec.read_text())["base_model"] for spec in jobs] == [str(first)]
        second = cache_snapshot(cache, checkpoint, SECOND_COMMIT)
        new_jobs = run() - jobs
        assert [json.loads(spec.read_text())["base_model"] for spec in new_jobs] == [str(second)]
        assert run("--training.base_model_revision", FIRST_COMMIT) == jobs | new_jobs, "the pinned commit's job"
    finally:  # the live model's server
        LocalTarget(PipelineSettings(local={"workspace_dir": tmp_path / "ws"})).teardown()


@pytest.mark.system
@pytest.mark.parametrize("case, expected, exit_code", [
    ("missing offline", "error: training.base_model microsoft/Phi-4-mini-instruct is not in the Hugging Face cache",
     2),
    ("gated", "error: training.base_model microsoft/Phi-4-mini-instruct is gated: accept its terms at", 2),
    ("too large", "error: memory short by", 1),  # the machine is short, not the input wrong
])
def test_hub_id_missing_gated_or_too_large_is_one_error_line_before_any_work(prefect_server, tmp_path, case,
                                                                             expected, exit_code):
    """From the terminal: one `error:` line, and nothing made in the workspace (no dataset, no job) and nothing
    downloaded."""
    repo_id = "microsoft/Phi-4-mini-instruct"
    answers = {"gated": {repo_id: gated(repo_id)},
               "too large": {repo_id: model_info(repo_id, FIRST_COMMIT, 400 * 2**30)}}
    env = {"HF_HUB_CACHE": str(tmp_path / "hf-cache"), "PHI3_LOCAL__WORKSPACE_DIR": str(tmp_path / "ws")}
    with fake_hub(answers.get(case, {})) as url:
        offline = case == "missing offline"
        env.update({"HF_HUB_OFFLINE": "1"} if offline else {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": url})
        result = run_cli("flows.full_pipeline", "--training.base_model", repo_id, env=env)
    assert result.returncode == exit_code and "Traceback" not in result.stderr + result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(expected), result.stderr
    if case == "missing offline":
        assert f"hf download {repo_id}" in last
    assert not (tmp_path / "ws" / "jobs").exists() and not (tmp_path / "ws" / "datasets").exists()
    assert not (tmp_path / "hf-cache").exists() or not any((tmp_path / "hf-cache").iterdir())
