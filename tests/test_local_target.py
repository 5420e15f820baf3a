"""The local target's stages for real: training process, registry, scoring server, teardown."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from phi3_pipeline.chat_data.split_files import split_and_write
from phi3_pipeline.config.errors import ConfigError, InsufficientResourcesError
from phi3_pipeline.config.settings import BUILTIN_BASE_MODEL, PipelineSettings
from phi3_pipeline.targets.base import raise_if_short
from phi3_pipeline.targets.local.target import LocalTarget
from phi3_pipeline.targets.workspace import write_json_atomic
from tests.conftest import ROOT, fake_nvidia_smi

QUESTIONS = ["Who founded Microsoft?", "What is the capital of France?", "Name a primary colour."]
CHAT = {"input_data": {"input_string": [{"role": "user", "content": "Who founded Microsoft?"}],
                       "parameters": {"temperature": 0.7, "max_new_tokens": 24}}}


def wait_for_job(target: LocalTarget, name: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = target.job_status(name)
        if status.state in ("Completed", "Failed", "Lost"):
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {name} did not finish in {timeout} s")


@pytest.fixture(scope="session")
def trained(tmp_path_factory, session_home):
    """A workspace with one small fine-tune job completed through the target (no Prefect)."""
    workspace = tmp_path_factory.mktemp("workspace")
    settings = PipelineSettings(local={"workspace_dir": workspace},
                                training={"epochs": 3, "base_pretrain_steps": 40})
    target = LocalTarget(settings)
    target.ensure_identity()
    dataset = target.store_dataset(split_and_write(settings.dataset, target.scratch_dir()))
    name = target.job_name(dataset.content_hash)
    assert target.find_or_submit_job(name, dataset) is True
    status = wait_for_job(target, name)
    assert status.state == "Completed", status
    return target, dataset, name


@pytest.fixture(scope="session")
def deployed(trained):
    target, dataset, name = trained
    model = target.register_model(target.job_result(name), dataset)
    deployment = target.go_live(target.deploy(model))
    yield target, model, deployment
    target.teardown()


def test_workspace_and_key_are_private(trained):
    target, _, _ = trained
    assert oct(target.ws.root.stat().st_mode & 0o777) == "0o700"
    assert oct(target.ws.key_file.stat().st_mode & 0o777) == "0o600"
    assert len(target.ws.read_key()) >= 43  # 256 random bits, url-safe base64
    assert target.ensure_identity().created is False


def test_training_ran_in_its_own_process_and_loss_went_down(trained):
    target, _, name = trained
    job_dir = target.ws.root / "jobs" / name
    status = json.loads((job_dir / "status.json").read_text())
    assert status["pid"] != os.getpid()
    result = target.job_result(name)
    assert result.metrics["train_loss_last"] < result.metrics["train_loss_first"]
    assert result.metrics["eval_loss_after"] < result.metrics["eval_loss_before"]
    assert len(result.loss_curve) == result.metrics["fine_tune_steps"]
    assert (job_dir / "output" / "adapter" / "adapter_config.json").is_file()


def test_a_finished_job_is_adopted_not_rerun(trained):
    target, dataset, name = trained
    before = (target.ws.root / "jobs" / name / "status.json").stat().st_mtime_ns
    assert target.find_or_submit_job(name, dataset) is False
    assert (target.ws.root / "jobs" / name / "status.json").stat().st_mtime_ns == before


def test_a_job_whose_process_died_is_started_again_and_a_failure_carries_its_error(trained):
    target, dataset, _ = trained
    broken = dataset.model_copy(update={"train_uri": "/nonexistent/train.jsonl"})
    job_dir = target.ws.dir("jobs", "dead-job")
    write_json_atomic(job_dir / "status.json", {"state": "Running", "pid": 2**22 + 12345, "step": 3})
    assert target.job_status("dead-job").state == "Lost"
    assert target.find_or_submit_job("dead-job", broken) is True
    status = wait_for_job(target, "dead-job", timeout=120)
    assert status.state == "Failed"
    error = target.job_failure("dead-job", status)
    assert "/nonexistent/train.jsonl" in str(error) and "job.log" in str(error)


def test_a_queued_job_whose_process_lives_is_adopted_not_started_twice(trained):
    target, dataset, _ = trained
    starting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "phi3_pipeline.targets.local.training_job"])
    try:
        job_dir = target.ws.dir("jobs", "queued-job")
        write_json_atomic(job_dir / "status.json", {"state": "Queued", "pid": starting.pid, "step": 0})
        assert target.find_or_submit_job("queued-job", dataset) is False
        assert json.loads((job_dir / "status.json").read_text())["pid"] == starting.pid
    finally:
        starting.kill()
        starting.wait()


def test_a_local_hugging_face_checkpoint_can_be_the_base_model(trained):
    target, dataset, name = trained
    checkpoint = target.ws.root / "jobs" / name / "output" / "model"
    training = target.settings.training.model_copy(update={"base_model": str(checkpoint), "epochs": 1})
    settings = target.settings.model_copy(update={"training": training})
    other_job = LocalTarget(settings).job_name(dataset.content_hash)
    assert other_job != name
    assert LocalTarget(settings).find_or_submit_job(other_job, dataset) is True
    assert wait_for_job(target, other_job).state == "Completed"
    adapter_config = target.ws.root / "jobs" / other_job / "output" / "adapter" / "adapter_config.json"
    adapter = json.loads(adapter_config.read_text())
    assert adapter["base_model_name_or_path"] == str(checkpoint)


def test_a_job_told_not_to_merge_is_served_as_its_base_plus_adapter_which_answers_as_the_merged_model(
        trained, tmp_path):
    """Where the merged copies do not fit (or training.merge_adapter=never) the registry holds the adapter, which
    names its base, and the scoring server loads both; greedy answers are those of the merged model."""
    from phi3_pipeline.serving.chat_model import ChatModel

    target, dataset, name = trained
    output = target.ws.root / "jobs" / name / "output"
    merged, unmerged = ChatModel(output / "model"), ChatModel(output / "adapter")
    prompts = [merged.encode([{"role": "user", "content": question}], 16) for question in QUESTIONS]
    assert [r.text for r in merged.replies(prompts, 0.0, 16)] == [r.text for r in unmerged.replies(prompts, 0.0, 16)]

    training = target.settings.training.model_copy(update={"base_model": str(output / "model"), "epochs": 2,
                                                           "merge_adapter": "never"})
    local = target.settings.local.model_copy(update={"workspace_dir": tmp_path / "ws"})
    other = LocalTarget(target.settings.model_copy(update={"training": training, "local": local}))
    other.ensure_identity()
    job = other.job_name(dataset.content_hash)
    assert other.find_or_submit_job(job, dataset) is True
    assert wait_for_job(other, job).state == "Completed"
    assert not (other.ws.root / "jobs" / job / "output" / "model").exists(), "nothing merged was written"
    model = other.register_model(other.job_result(job), dataset)
    assert list(Path(model.uri).rglob("adapter_config.json")) and not list(Path(model.uri).rglob("config.json"))
    try:
        deployment = other.deploy(model)
        assert other.ask(deployment, QUESTIONS[0], 16)
    finally:
        other.teardown()


def test_a_model_memory_cannot_serve_is_one_config_error_from_the_deploy(trained, tmp_path):
    """The server sizes the model before loading it: keys and values (here 1 GiB a token) of which no memory
    holds one answer of 4,096 tokens stop the deploy with the server's one line, and no server is left."""
    from phi3_pipeline.config.errors import ConfigError
    from phi3_pipeline.targets.base import ModelRef

    target, dataset, name = trained
    model_dir = tmp_path / "model"
    shutil.copytree(target.ws.root / "jobs" / name / "output" / "model", model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "head_dim": 2**24}))
    local = target.settings.local.model_copy(update={"workspace_dir": tmp_path / "ws"})
    other = LocalTarget(target.settings.model_copy(update={"local": local}))
    other.ensure_identity()
    with pytest.raises(ConfigError, match=r"^serving this model needs .* GiB of CPU memory .* GiB are free"):
        other.deploy(ModelRef(name="too-long", version=1, job_name=name, created=True, uri=str(model_dir)))
    assert other.teardown().removed == [], "no server was left running"


def test_registry_versions_with_lineage_and_loads_as_mlflow_model(trained):
    import mlflow.pyfunc

    from phi3_pipeline.serving.chat_model import ChatModel

    target, dataset, name = trained
    job = target.job_result(name)
    first = target.register_model(job, dataset)
    again = target.register_model(job, dataset)
    assert (again.version, again.created) == (first.version, False)
    shutil.copytree(target.ws.root / "jobs" / name, target.ws.root / "jobs" / "another-job")
    other = target.register_model(job.model_copy(update={"name": "another-job"}), dataset)
    assert other.version == first.version + 1
    lineage = json.loads((target.ws.root / "registry" / first.name / str(first.version) / "lineage.json").read_text())
    assert lineage["job_name"] == name and lineage["data_hash"] == dataset.content_hash
    conversations = [[{"role": "user", "content": question}] for question in QUESTIONS]
    answers = mlflow.pyfunc.load_model(first.uri).predict(conversations)
    assert len(answers) == len(QUESTIONS) and all(isinstance(answer, str) for answer in answers)
    greedy = {"max_new_tokens": 8, "temperature": 0.0}  # MLflow passes no params to a model without a signature
    chat = ChatModel(first.uri)
    assert chat.predict(conversations, greedy) == [chat.predict([conversation], greedy)[0]
                                                   for conversation in conversations], "answered together as alone"


def test_server_checks_the_key_and_the_body(deployed):
    target, _, deployment = deployed
    url = deployment.scoring_uri
    key = target._endpoint_key(deployment)
    assert url.startswith("http://127.0.0.1:")
    assert requests.get(url.removesuffix("score"), timeout=5).status_code == 200  # health, no key
    assert requests.post(url, json=CHAT, timeout=30).status_code == 401
    assert requests.post(url, json=CHAT, headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
    assert requests.post(url, json=CHAT, headers={"Authorization": key}, timeout=30).status_code == 401
    auth = {"Authorization": f"Bearer {key}"}
    for bad in ("not json", json.dumps({"input": 1}),
                json.dumps({"input_data": {"input_string": [{"role": "robot", "content": "x"}]}}),
                json.dumps({"input_data": {"input_string": [{"role": "user", "content": "x"}],
                                           "parameters": {"max_new_tokens": 10**6}}}),
                json.dumps({"input_data": {"input_string": [{"role": "user", "content": "x"}], "parameters": [1]}}),
                json.dumps({"input_data": {"input_string": [{"role": "user", "content": "x"}],
                                           "parameters": {"max_new_tokens": True}}})):
        response = requests.post(url, data=bad, headers={**auth, "Content-Type": "application/json"}, timeout=30)
        assert response.status_code == 400, (bad, response.text)
        assert "error" in response.json()
    response = requests.post(url, json=CHAT, headers=auth, timeout=60)
    assert response.status_code == 200 and isinstance(response.json()["output"], str)


def test_the_real_server_refuses_what_it_cannot_answer_with_4xx_and_stays_up(deployed):
    target, _, deployment = deployed
    url, auth = deployment.scoring_uri, {"Authorization": f"Bearer {target._endpoint_key(deployment)}"}
    long_prompt = {"input_data": {"input_string": [{"role": "user", "content": "word " * 3000}],
                                  "parameters": {"max_new_tokens": 64}}}
    too_long = requests.post(url, json=long_prompt, headers=auth, timeout=60)
    assert too_long.status_code == 400 and "at most 448 input tokens (512 positions)" in too_long.json()["error"]
    oversized = {"input_data": {"input_string": [{"role": "user", "content": "x" * 1_000_000}]}}
    try:
        assert requests.post(url, json=oversized, headers=auth, timeout=30).status_code == 413
    except requests.ConnectionError:  # waitress refuses past twice the limit and may close while we still write
        pass
    nested = "[" * 10_000 + "]" * 10_000
    assert requests.post(url, data=nested, headers={**auth, "Content-Type": "application/json"},
                         timeout=30).status_code == 400
    started = time.monotonic()
    assert requests.get(url.removesuffix("score"), timeout=1).ok and time.monotonic() - started < 1
    assert requests.post(url, json=CHAT, headers=auth, timeout=60).status_code == 200


def test_server_listens_on_loopback_only(deployed):
    _, _, deployment = deployed
    port = int(deployment.scoring_uri.split(":")[2].split("/")[0])
    listeners = [c for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN"]
    assert listeners and all(c.laddr.ip == "127.0.0.1" for c in listeners)


def test_deploy_again_reuses_the_live_server_with_full_traffic(deployed):
    target, model, deployment = deployed
    again = target.deploy(model)
    assert again.created is False and again.live
    assert again.scoring_uri == deployment.scoring_uri
    assert again.traffic == {deployment.deployment_name: 100}
    assert target.live_deployment() == again


def test_port_in_use_is_reported_before_any_work(trained, tmp_path):
    target, _, _ = trained
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        busy = LocalTarget(target.settings.model_copy(
            update={"local": target.settings.local.model_copy(update={"port": port})}))
        with pytest.raises(InsufficientResourcesError, match=f"port {port} on 127.0.0.1 short by 1"):
            raise_if_short(busy.check_resources())
        with pytest.raises(ConfigError, match=f"local.port {port} is in use"):
            busy.endpoint.start_server(tmp_path, {"model_dir": str(tmp_path), "port": port})


def test_chat_flow_tool_answers_raises_on_http_errors_and_never_logs_the_key(deployed, caplog):
    import sys

    from promptflow.connections import CustomConnection

    sys.path.insert(0, str(ROOT / "phi3_pipeline" / "chat_flow"))
    from integrate_with_promptflow import query_phi3_model

    target, _, deployment = deployed
    key = target._endpoint_key(deployment)
    caplog.set_level("DEBUG")
    good = CustomConnection(configs={"endpoint": deployment.scoring_uri}, secrets={"key": key})
    assert isinstance(query_phi3_model("Who founded Apple?", good), str)
    bad = CustomConnection(configs={"endpoint": deployment.scoring_uri}, secrets={"key": "not-the-key"})
    with pytest.raises(requests.HTTPError, match="401"):
        query_phi3_model("Who founded Apple?", bad)
    assert key not in caplog.text and "Full JSON response" in caplog.text


def test_the_server_speaks_both_scoring_contracts_to_the_pipeline_and_the_chat_flow(deployed, tmp_path):
    from phi3_pipeline.chat_flow import promptflow_chat

    target, _, deployment = deployed
    key = target._endpoint_key(deployment)
    auth = {"Authorization": f"Bearer {key}"}
    base = deployment.scoring_uri.removesuffix("/score")
    openai_style = {"messages": CHAT["input_data"]["input_string"], "temperature": 0, "max_tokens": 8}
    for path in ("/chat/completions", "/v1/chat/completions"):
        assert requests.post(base + path, json=openai_style, timeout=30).status_code == 401
        answer = requests.post(base + path, json=openai_style, headers=auth, timeout=60).json()
        assert isinstance(answer["choices"][0]["message"]["content"], str)
    too_long = {**openai_style, "max_tokens": 10**6}
    assert requests.post(base + "/chat/completions", json=too_long, headers=auth, timeout=30).status_code == 400
    as_chat = deployment.model_copy(update={"contract": "chat_completions"})
    assert target.ask(as_chat, "Who founded Microsoft?", 8) == target.ask(deployment, "Who founded Microsoft?", 8), \
        "greedy answers are the same whichever contract asks"
    promptflow_chat.upsert_connection("phi3_contract_test", deployment.scoring_uri, key, "chat_completions",
                                      owner="contract-test")
    try:
        flow = promptflow_chat.prepare_flow(tmp_path / "flow", "phi3_contract_test")
        assert promptflow_chat.run_chat_flow(flow, "Who founded Microsoft?", 120).strip()
    finally:
        promptflow_chat.delete_connection("phi3_contract_test", owner="contract-test")


def test_a_replaced_key_restarts_the_server_with_the_new_key(deployed):
    target, model, deployment = deployed
    target.ws.key_file.unlink()
    target.ensure_identity()
    again = target.deploy(model)
    assert again.created is True
    auth = {"Authorization": f"Bearer {target._endpoint_key(again)}"}
    assert requests.post(again.scoring_uri, json=CHAT, headers=auth, timeout=60).status_code == 200


def test_teardown_stops_the_server_and_is_idempotent(trained):
    target, dataset, name = trained
    model = target.register_model(target.job_result(name), dataset)
    deployment = target.deploy(model)
    pid = json.loads((target.ws.root / "deployments" / deployment.deployment_name / "state.json").read_text())["pid"]
    first = target.teardown()
    assert f"server {deployment.deployment_name}" in first.removed
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(requests.ConnectionError):
        requests.get(deployment.scoring_uri.removesuffix("score"), timeout=5)
    second = target.teardown()
    assert second.removed == []
    assert not list((target.ws.root / "deployments").glob("*"))


def test_a_server_a_killed_run_left_loading_its_model_is_stopped_by_the_teardown(trained):
    """A run can be killed (or cancelled) while its candidate loads the model, before the server writes where it
    listens: the teardown still finds the server by the pid the run wrote, and stops it."""
    target, dataset, name = trained
    model = target.register_model(target.job_result(name), dataset)
    deploying = subprocess.Popen([sys.executable, "-c", (
        "import sys; from phi3_pipeline.config.settings import PipelineSettings as S; "
        "from phi3_pipeline.targets.base import ModelRef as M; from phi3_pipeline.targets.local.target import LocalTarget; "
        "LocalTarget(S.model_validate_json(sys.argv[1])).deploy(M.model_validate_json(sys.argv[2]))"),
        target.settings.model_dump_json(), model.model_dump_json()], cwd=ROOT)
    deployment_dir = target.ws.root / "deployments" / f"{model.name}-v{model.version}"
    deadline = time.monotonic() + 60
    while not (servers := [p for p in psutil.process_iter(["cmdline"])
                           if str(deployment_dir) in " ".join(p.info["cmdline"] or [])]):
        assert time.monotonic() < deadline, "no server started"
        time.sleep(0.01)
    deploying.kill()
    deploying.wait(10)
    assert not (deployment_dir / "state.json").exists(), "the server was still loading"
    assert f"server {deployment_dir.name}" in target.teardown().removed
    assert not servers[0].is_running() or servers[0].status() == psutil.STATUS_ZOMBIE


def test_a_gpu_short_of_memory_is_reported_with_the_cpu_way_out(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path / "bin", monkeypatch, free_mib=100)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    target = LocalTarget(PipelineSettings(local={"workspace_dir": tmp_path / "ws"}))
    with pytest.raises(InsufficientResourcesError, match=r"GPU memory \(Tesla T4 --id=0\).*training.method=qlora, or set CUDA_VISIBLE_DEVICES="):
        raise_if_short(target.check_resources())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the way out, taken by the next run (a target reads the GPU once)
    rerun = LocalTarget(PipelineSettings(local={"workspace_dir": tmp_path / "ws"}))
    assert not [check for check in rerun.check_resources() if check.resource.startswith("GPU")]


def test_the_sweep_removes_endpoints_past_their_age_and_keeps_fresh_ones(tmp_path):
    target = LocalTarget(PipelineSettings(local={"workspace_dir": tmp_path}))
    for name, age_hours in (("old-endpoint", 30), ("fresh-endpoint", 1)):
        target.ws.dir("deployments", f"{name}-v1")
        write_json_atomic(target.ws.dir("endpoints") / f"{name}.json", {
            "scoring_uri": "http://127.0.0.1:9/score", "traffic": {f"{name}-v1": 100},
            "live_since": time.time() - age_hours * 3600})
    stray = target.ws.dir("deployments", "killed-run-candidate-v2")  # a candidate no endpoint routes to
    write_json_atomic(stray / "spec.json", {"model_version": 2})
    os.utime(stray / "spec.json", (time.time() - 30 * 3600,) * 2)
    report = target.sweep(older_than_hours=24)
    assert report.removed == ["server old-endpoint-v1", "endpoint old-endpoint", "server killed-run-candidate-v2"]
    assert sorted(p.name for p in (tmp_path / "endpoints").iterdir()) == ["fresh-endpoint.json"]
    assert sorted(p.name for p in (tmp_path / "deployments").iterdir()) == ["fresh-endpoint-v1"]


def test_the_teardown_command_sweeps_with_an_age_limit(prefect_server, tmp_path, capsys):
    from phi3_pipeline.cli.commands import run_teardown_cli

    target = LocalTarget(PipelineSettings(local={"workspace_dir": tmp_path}))
    write_json_atomic(target.ws.dir("endpoints") / "phi3-custom-endpoint.json", {
        "scoring_uri": "http://127.0.0.1:9/score", "traffic": {}, "live_since": time.time() - 48 * 3600})
    assert run_teardown_cli(["--older_than_hours", "24", "--local.workspace_dir", str(tmp_path)]) == 0
    assert "removed: endpoint phi3-custom-endpoint" in capsys.readouterr().out
    assert not (tmp_path / "endpoints" / "phi3-custom-endpoint.json").exists()


def test_plan_lists_what_a_local_run_would_do_and_starts_nothing(tmp_path, capsys):
    from phi3_pipeline.cli.commands import run_pipeline_cli

    assert run_pipeline_cli(["--plan", "--local.workspace_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fine-tune job phi3-custom-ft-" in out and "submit" in out and "create" in out
    assert "up to 0.00 USD/hour" in out and "Nothing was created." in out
    assert not (tmp_path / "jobs").exists() and not (tmp_path / "deployments").exists()


def test_a_local_port_the_live_server_does_not_hold_is_said_before_the_run(deployed):
    target, model, _ = deployed
    deployment = target.go_live(target.deploy(model))  # live again, whatever the tests before did
    port = int(deployment.scoring_uri.rsplit(":", 1)[1].split("/")[0])
    other = LocalTarget(target.settings.model_copy(
        update={"local": target.settings.local.model_copy(update={"port": port + 1})}))
    (notice,) = other.notices()
    assert f"local.port is {port + 1} but {deployment.deployment_name} serves on port {port}" in notice
    assert target.notices() == []


def test_teardown_keeps_a_connection_that_belongs_to_another_workspace(tmp_path, session_home):
    from phi3_pipeline.chat_flow import promptflow_chat

    promptflow_chat.upsert_connection("phi3_scoped_test", "http://127.0.0.1:1/score", "other-key", "input_data",
                                      owner="workspace-b")
    try:
        workspace_a = LocalTarget(PipelineSettings(local={"workspace_dir": tmp_path / "a"},
                                                   connection_name="phi3_scoped_test"))
        workspace_a.ensure_identity()
        report = workspace_a.teardown()
        assert report.kept == ["connection phi3_scoped_test"]
        assert promptflow_chat.connection_endpoint("phi3_scoped_test") == "http://127.0.0.1:1/score"
    finally:
        promptflow_chat.delete_connection("phi3_scoped_test", owner="workspace-b")


def test_a_connection_already_holding_the_endpoint_and_key_is_not_written_again(session_home):
    from phi3_pipeline.chat_flow import promptflow_chat

    args = ("phi3_rewrite_test", "http://127.0.0.1:1/score")
    try:
        assert promptflow_chat.upsert_connection(*args, "key-1", "input_data", owner="ws") is True
        assert promptflow_chat.upsert_connection(*args, "key-1", "input_data", owner="ws") is False, "a re-run"
        assert promptflow_chat.upsert_connection(*args, "key-2", "input_data", owner="ws") is True, "a new key"
        assert promptflow_chat.upsert_connection(*args, "key-2", "chat_completions", owner="ws") is True
        assert promptflow_chat.upsert_connection(*args, "key-2", "chat_completions", owner="ws") is False
    finally:
        promptflow_chat.delete_connection("phi3_rewrite_test", owner="ws")


def test_the_openai_client_gets_an_answer_with_usage_and_a_clear_400_for_a_stream(deployed):
    """The official `openai` client against the local server's /v1: a whole reply with its token usage; a stream,
    which this server does not send, is refused with 400 rather than answered with an empty reply."""
    import openai

    target, model, _ = deployed
    deployment = target.go_live(target.deploy(model))  # up whatever other tests did to the session's server
    client = openai.OpenAI(base_url=deployment.scoring_uri.removesuffix("/score") + "/v1",
                           api_key=target._endpoint_key(deployment), max_retries=0)
    messages = CHAT["input_data"]["input_string"]
    completion = client.chat.completions.create(model=deployment.deployment_name, messages=messages, max_tokens=8,
                                                temperature=0)
    assert completion.choices[0].message.content.strip()
    usage = completion.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert completion.model == deployment.deployment_name
    with pytest.raises(openai.BadRequestError, match="stream"):
        client.chat.completions.create(model=deployment.deployment_name, messages=messages, max_tokens=8,
                                       stream=True)


def test_disconnect_stop_ends_a_generation_at_the_next_token(deployed):
    """What the server's disconnect check drives: a generation asked to stop gives back at most one token, and
    the same question unasked runs to its own end."""
    sys.path.insert(0, str(ROOT / "phi3_pipeline" / "serving"))
    from chat_model import ChatModel

    _, model, _ = deployed
    chat = ChatModel(model.uri)
    messages = CHAT["input_data"]["input_string"]
    asked = []
    stopped = chat.reply(messages, 0, 64, stop=lambda: asked.append(1) or True)
    assert stopped.completion_tokens <= 1 and asked
    assert chat.reply(messages, 0, 64, stop=lambda: False).completion_tokens >= stopped.completion_tokens


def test_request_queue_a_batched_call_answers_each_conversation_as_its_own_call_does(deployed):
    """Conversations of different lengths answered together (left-padded) get, greedily, the answers each gets
    alone; a row whose client has gone stops while the others run on."""
    sys.path.insert(0, str(ROOT / "phi3_pipeline" / "serving"))
    from chat_model import ChatModel

    _, model, _ = deployed
    chat = ChatModel(model.uri)
    conversations = [[{"role": "user", "content": question}] for question in
                     ("Hi", "Who founded Microsoft?", "What is the capital of France, and why is it so large?")]
    alone = [chat.reply(messages, 0, 24) for messages in conversations]
    prompts = [chat.encode(messages, 24) for messages in conversations]
    assert len({len(prompt) for prompt in prompts}) == 3, "the batch needs padding"
    assert chat.replies(prompts, 0, 24) == alone
    gone = chat.replies(prompts, 0, 24, stops=[lambda: False, lambda: True, lambda: False])
    assert [gone[0], gone[2]] == [alone[0], alone[2]]


AGENT_ENV = ROOT / ".venv-agent"


@pytest.fixture(scope="session")
def agent_env():
    """The agent's own environment, as the README's agent install command (and .ci/run) makes it."""
    from phi3_pipeline import chat_agent

    if not (AGENT_ENV / "bin" / "python").is_file():
        pytest.fail(f"the Agent Framework environment is missing: {chat_agent.install_command(AGENT_ENV)}")
    return AGENT_ENV


def test_agent_answers_through_agent_framework_in_both_contracts_and_names_a_refusal(deployed, agent_env):
    from phi3_pipeline import chat_agent
    from phi3_pipeline.chat_flow.scoring_contract import CONTRACTS

    target, model, _ = deployed
    deployment = target.go_live(target.deploy(model))  # up whatever other tests did to the session's server
    for contract in CONTRACTS:  # the framework's OpenAI-compatible client, and our own input_data chat client
        config = target.agent_config(deployment.model_copy(update={"contract": contract}), "Who founded Microsoft?")
        assert chat_agent.ask(agent_env, config, 120).strip(), contract
    refused = {**target.agent_config(deployment, "Who founded Microsoft?"), "key": "not-the-key"}
    with pytest.raises(chat_agent.AgentFailed, match=f"{deployment.deployment_name} \\(input_data\\): .*401") as error:
        chat_agent.ask(agent_env, refused, 120)
    assert target._endpoint_key(deployment) not in str(error.value)


def test_agent_is_refused_with_the_install_command_when_its_environment_is_missing(tmp_path):
    from phi3_pipeline import chat_agent

    with pytest.raises(ConfigError, match=r"own environment, .*missing-env, which does not exist: make it with "
                                          r"`python3 -m venv .*missing-env && .*pip install -r "):
        chat_agent.ask(tmp_path / "missing-env", {"deployment": "d"}, 10)


@pytest.mark.system
def test_chat_command_answers_a_question_and_holds_a_conversation_on_a_terminal(deployed, agent_env):
    import pty

    target, model, _ = deployed
    live = target.go_live(target.deploy(model)).deployment_name
    chat = [str(Path(sys.executable).parent / "phi3-pipeline"), "chat", "--local.workspace_dir",
            str(target.settings.local.workspace_dir), "--agent_env", str(agent_env)]
    once = subprocess.run([*chat, "--question", "Who founded Microsoft?"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert once.returncode == 0 and once.stdout.strip(), once.stderr
    controller, terminal = pty.openpty()
    session = subprocess.Popen(chat, cwd=ROOT, stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    try:
        seen = _read_until(controller, b"you> ")
        assert seen.strip().startswith(f"chatting with {live}".encode()), seen  # nothing else on the terminal
        os.write(controller, b"Who founded Microsoft?\n")
        answer = _read_until(controller, b"you> ")
        assert b"model> " in answer and answer.split(b"model> ", 1)[1].strip(b"\r\nyou> "), answer
        os.write(controller, b"And when?\n")  # a second turn: the agent's session carries the first
        assert b"model> " in _read_until(controller, b"you> ")
        os.write(controller, b"exit\n")
        assert session.wait(timeout=60) == 0
    finally:
        session.kill()
        session.wait()
        os.close(controller)


CHROMIUM = Path("/usr/bin/chromium")  # Debian's package, which .ci/run installs
# what a headless Chromium needs on a machine with no network: no sandbox as root, no calls home
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]


@pytest.mark.system
def test_chat_command_web_chat_answers_in_a_real_browser_behind_its_sign_in_token(deployed, agent_env, tmp_path):
    """`phi3-pipeline chat --ui`: DevUI on 127.0.0.1, its page asks for the sign-in token the command showed, then
    chats with the live deployment; Ctrl-C ends it and frees the port."""
    import signal

    from playwright.sync_api import sync_playwright

    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: apt-get install chromium (as .ci/run does)"
    target, model, _ = deployed
    target.go_live(target.deploy(model))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    web_chat = subprocess.Popen(
        [str(Path(sys.executable).parent / "phi3-pipeline"), "chat", "--ui", "--ui_port", str(port),
         "--local.workspace_dir", str(target.settings.local.workspace_dir), "--agent_env", str(agent_env)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        shown = web_chat.stdout.readline()
        assert shown.startswith(f"web chat: http://127.0.0.1:{port} (sign-in token: "), shown
        sign_in_token = shown.split("sign-in token: ", 1)[1].split(")", 1)[0]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and web_chat.poll() is None:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.3)
        assert requests.get(f"http://127.0.0.1:{port}/v1/entities", timeout=5).status_code == 401  # no token
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_placeholder("Paste token from server logs").fill(sign_in_token)
            page.get_by_role("button", name="Connect").click()
            question = page.get_by_placeholder("Message phi3-chat", exact=False)
            question.fill("Who founded Microsoft?")
            question.press("Enter")
            reply = page.locator("div.bg-muted .markdown-content").last  # the assistant's bubble
            reply.wait_for(timeout=120_000)
            assert reply.inner_text().strip() not in ("", "Who founded Microsoft?")
            page.screenshot(path=tmp_path / "web-chat.png")
            browser.close()
        os.killpg(web_chat.pid, signal.SIGINT)  # Ctrl-C on its terminal
        web_chat.wait(timeout=30)
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
    finally:
        if web_chat.poll() is None:
            os.killpg(web_chat.pid, signal.SIGKILL)
            web_chat.wait()


def _read_until(fd: int, marker: bytes, timeout: float = 120) -> bytes:
    """What the terminal showed up to and including the next `marker`."""
    import select

    seen, deadline = b"", time.monotonic() + timeout
    while not seen.endswith(marker):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no {marker!r} within {timeout} s; the terminal showed {seen!r}"
        seen += os.read(fd, 4096)
    return seen


def test_chat_command_with_nothing_deployed_is_one_line_and_exit_2_and_makes_nothing(tmp_path, capsys):
    from phi3_pipeline.cli.commands import run_chat_cli

    code = run_chat_cli(["--local.workspace_dir", str(tmp_path / "ws"), "--question", "Who founded Microsoft?"])
    assert code == 2
    assert capsys.readouterr().err.strip() == ("error: nothing is deployed on the local target: run "
                                               "`python -m flows.full_pipeline` first")
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize("given", ["models/ck", "~/ck"])
def test_a_base_model_folder_given_relative_or_from_home_reaches_the_job_as_an_absolute_path(tmp_path, monkeypatch,
                                                                                            given):
    """The job runs from the project's root and the adapter's base is read by the server: neither may depend on
    where the run started or on the shell's ~."""
    from phi3_pipeline.targets.base import DatasetRef
    from tests.hub_fakes import make_checkpoint

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    folder = make_checkpoint(tmp_path / given.removeprefix("~/"))
    target = LocalTarget(PipelineSettings(local={"workspace_dir": tmp_path / "ws"}, training={"base_model": given}))
    dataset = DatasetRef(content_hash="0" * 64, train_uri="t", test_uri="t", train_rows=1, test_rows=1, created=True)
    assert target._job_spec(dataset)["base_model"] == str(folder.resolve())


def test_a_change_to_how_a_models_own_template_is_tokenized_trains_its_jobs_anew_not_the_builtin_models(
        tmp_path, monkeypatch):
    from phi3_pipeline.targets.local import target as local_target
    from tests.hub_fakes import make_checkpoint

    folder = make_checkpoint(tmp_path / "ck")
    targets = [LocalTarget(PipelineSettings(local={"workspace_dir": tmp_path / "ws"},
                                            training={"base_model": str(base)})) for base in (folder, BUILTIN_BASE_MODEL)]
    before = [target.job_name("data") for target in targets]
    monkeypatch.setattr(local_target, "TEMPLATE_ENCODING", local_target.TEMPLATE_ENCODING + 1)
    after = [target.job_name("data") for target in targets]
    assert after[0] != before[0] and after[1] == before[1]


def test_a_real_base_model_with_the_built_in_models_length_limit_is_told_to_set_it(tmp_path):
    from tests.hub_fakes import make_checkpoint

    folder = make_checkpoint(tmp_path / "ck")

    def notices(**training) -> list[str]:
        return LocalTarget(PipelineSettings(local={"workspace_dir": tmp_path / "ws"},
                                            training=training)).notices()

    (notice,) = notices(base_model=str(folder))
    assert notice.startswith("training.max_seq_length is 96 tokens, sized for the built-in model") and "2048" in notice
    assert notices(base_model=str(folder), max_seq_length=2048) == []
    assert notices() == [], "the built-in model"
