"""Load on the local scoring server: N clients for T seconds, then 1 MB prompts beside a health probe, then
clients that give up mid-generation.

    python bench/load_scoring.py [--clients 16] [--seconds 60] [--no-retry] [--workspace DIR]

Trains and deploys the built-in model in a fresh workspace (about a minute) unless --workspace names one
whose live deployment should be used; what it started, it stops. Clients honour 503's Retry-After, or with
--no-retry send their next request at once, as a client that does not retry does.
Prints, for the steady load, requests, answers per second, errors (anything but 200 and 503), 503 refusals,
p50/p95 latency and the worst health probe; for the flood (4 clients sending 1 MB prompts for 10 s) the worst
health-probe and small-request latency of a fifth client; for the disconnect (8 clients asking for the longest
answer and closing their sockets 0.3 s later) how long the server's process kept computing; and its peak RSS.
The trained model ends its answers within a few tokens, so the disconnect is measured on a server of its own
for the same model told never to end an answer: each runs to the length limit.
Targets: 0 errors and, at the defaults with 16 clients, 0 refusals; health probe < 1 s throughout; a small
request answered or refused (503) within 2 s during the flood; the server idle within 1 s of the disconnects.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phi3_pipeline.chat_data.split_files import split_and_write  # noqa: E402
from phi3_pipeline.config.settings import PipelineSettings  # noqa: E402
from phi3_pipeline.serving.chat_model import find_checkpoint  # noqa: E402
from phi3_pipeline.targets.local.target import LocalTarget  # noqa: E402
from phi3_pipeline.targets.workspace import read_json  # noqa: E402

SMALL = {"input_data": {"input_string": [{"role": "user", "content": "Who founded Microsoft?"}],
                        "parameters": {"temperature": 0.7, "max_new_tokens": 32}}}
HUGE = {"input_data": {"input_string": [{"role": "user", "content": "x" * 1_000_000}]}}


def live_server(workspace: Path | None) -> tuple[str, dict, int, LocalTarget, bool]:
    """(scoring URI, auth header, server pid, the target, whether this made the deployment: then it tears it
    down)."""
    settings = PipelineSettings(local={"workspace_dir": workspace or Path(tempfile.mkdtemp()) / "ws"},
                                training={"epochs": 3, "base_pretrain_steps": 40}, dataset={"sample_size": 200})
    target = LocalTarget(settings)
    deployment = target.live_deployment()
    made = deployment is None
    if made:
        target.ensure_identity()
        dataset = target.store_dataset(split_and_write(settings.dataset, target.scratch_dir()))
        name = target.job_name(dataset.content_hash)
        target.find_or_submit_job(name, dataset)
        while target.job_status(name).state not in ("Completed", "Failed", "Lost"):
            time.sleep(1)
        deployment = target.go_live(target.deploy(target.register_model(target.job_result(name), dataset)))
    state = target.endpoint.server_state(target.endpoint.deployment_dir(deployment.deployment_name))
    return deployment.scoring_uri, {"Authorization": f"Bearer {target.ws.read_key()}"}, state["pid"], target, made


@contextmanager
def rambling_server(target: LocalTarget) -> Iterator[tuple[str, int, int]]:
    """A server beside the live one, under the same key, for the live model with its end-of-answer token
    suppressed (its generation config's `suppress_tokens`), allowed answers as long as its positions allow;
    (scoring URI, pid, that answer length)."""
    from transformers import GenerationConfig

    live = target.endpoint.deployment_dir(target.live_deployment().deployment_name)
    checkpoint = find_checkpoint(read_json(live / "spec.json")["model_dir"])
    folder = Path(tempfile.mkdtemp())
    model = shutil.copytree(checkpoint, folder / "model")
    generation = GenerationConfig.from_pretrained(checkpoint)
    generation.suppress_tokens = [generation.eos_token_id]
    generation.save_pretrained(model)
    positions = json.loads((checkpoint / "config.json").read_text())["max_position_embeddings"]
    limits = {**target.serving_limits(), "max_new_tokens": positions - 64, "generation_timeout_s": 120}
    state = target.endpoint.start_server(folder, {"model_dir": str(model), "model_version": 0,
                                                  "key_file": str(target.ws.key_file), "port": 0, "limits": limits})
    try:
        yield f"http://{state['host']}:{state['port']}/score", state["pid"], limits["max_new_tokens"]
    finally:
        target.endpoint.remove(folder)


def peak_rss(pid: int, stop: threading.Event, peak: list[float]) -> None:
    process = psutil.Process(pid)
    while not stop.is_set():
        peak[0] = max(peak[0], process.memory_info().rss / 2**20)
        time.sleep(0.2)


def probe_health(url: str, seconds: float, worst) -> None:
    """The health probe twice a second for `seconds`; its worst latency into `worst`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        requests.get(url.removesuffix("score"), timeout=5)
        worst.value = max(worst.value, time.monotonic() - started)
        time.sleep(0.5)


def steady(url: str, auth: dict, clients: int, seconds: float, retry: bool = True) -> dict:
    latencies, codes = [], []
    deadline = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                response = requests.post(url, json=SMALL, headers=auth, timeout=60)
                code = response.status_code
            except requests.RequestException:
                code = 0
            latencies.append(time.monotonic() - started)
            codes.append(code)
            if code == 503 and retry:  # a well-behaved client waits as told
                time.sleep(float(response.headers.get("Retry-After", 1)))

    worst_health = multiprocessing.Value("d", 0.0)
    # in a process of its own: the load's client threads would hold up its GIL, not the server
    probe = multiprocessing.Process(target=probe_health, args=(url, seconds, worst_health))
    probe.start()
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(client)
    probe.join()

    ok = [lat for lat, code in zip(latencies, codes, strict=True) if code == 200]
    return {"requests": len(codes), "ok": len(ok), "answers_per_s": round(len(ok) / seconds, 1),
            "refused_503": codes.count(503), "errors": sum(code not in (200, 503) for code in codes),
            "p50_s": round(statistics.median(ok), 3) if ok else None,
            "p95_s": round(statistics.quantiles(ok, n=20)[18], 3) if len(ok) > 1 else None,
            "worst_health_s": round(worst_health.value, 3)}


def disconnect(url: str, auth: dict, pid: int, max_new_tokens: int, clients: int = 8) -> dict:
    """`clients` requests at once for the longest answer, answered in full (timed); then the same requests with
    their sockets closed 0.3 s in, and how long the server's process kept computing after that (CPU above a tenth
    of a core over 100 ms windows)."""
    longest = {"input_data": {"input_string": SMALL["input_data"]["input_string"],
                              "parameters": {"temperature": 0.7, "max_new_tokens": max_new_tokens}}}
    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda _: requests.post(url, json=longest, headers=auth, timeout=120), range(clients)))
    all_answered_s = time.monotonic() - started
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    body = json.dumps(longest).encode()
    sockets = []
    for _ in range(clients):
        client = socket.create_connection((host, int(port)), timeout=5)
        client.sendall(f"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: {auth['Authorization']}\r\n"
                       f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        sockets.append(client)
    time.sleep(0.3)
    for client in sockets:
        client.close()
    gone = time.monotonic()
    process = psutil.Process(pid)
    busy_until = gone
    while time.monotonic() - gone < 30:
        before = sum(process.cpu_times()[:2])
        time.sleep(0.1)
        if sum(process.cpu_times()[:2]) - before > 0.01:
            busy_until = time.monotonic()
        elif time.monotonic() - busy_until > 1:
            break
    return {"all_answered_s": round(all_answered_s, 2), "busy_after_disconnect_s": round(busy_until - gone, 2)}


def flood(url: str, auth: dict, seconds: float = 10) -> dict:
    stop, worst = threading.Event(), {"health_s": 0.0, "small_s": 0.0, "small_codes": set()}

    def flooder() -> None:
        while not stop.is_set():
            try:
                requests.post(url, json=HUGE, headers=auth, timeout=60)
            except requests.RequestException:
                pass

    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(flooder)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.monotonic()
            requests.get(url.removesuffix("score"), timeout=5)
            worst["health_s"] = max(worst["health_s"], time.monotonic() - started)
            started = time.monotonic()
            worst["small_codes"].add(requests.post(url, json=SMALL, headers=auth, timeout=30).status_code)
            worst["small_s"] = max(worst["small_s"], time.monotonic() - started)
        stop.set()
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--no-retry", action="store_true", help="clients send their next request at once")
    parser.add_argument("--workspace", type=Path)
    args = parser.parse_args()
    url, auth, pid, target, made = live_server(args.workspace)
    stop, peak = threading.Event(), [0.0]
    threading.Thread(target=peak_rss, args=(pid, stop, peak), daemon=True).start()
    try:
        result = steady(url, auth, args.clients, args.seconds, retry=not args.no_retry)
        clients = "not retrying" if args.no_retry else "503s honour Retry-After"
        print(f"steady: {args.clients} clients x {args.seconds:g} s ({clients}): {result}")
        worst = flood(url, auth)
        with rambling_server(target) as (rambling_url, rambling_pid, longest):
            cancelled = disconnect(rambling_url, auth, rambling_pid, longest)
    finally:
        stop.set()
        if made:  # the bench started this server: it stops it
            target.teardown()
    print(f"flood: 4 clients sending 1 MB prompts: worst health probe {worst['health_s']:.3f} s, worst small "
          f"request {worst['small_s']:.3f} s (answers {sorted(worst['small_codes'])})")
    print(f"disconnect: 8 clients asking at once for {longest}-token answers: answered in full in "
          f"{cancelled['all_answered_s']} s; gone 0.3 s in, the server computed "
          f"{cancelled['busy_after_disconnect_s']} s longer")
    print(f"server peak RSS: {peak[0]:.0f} MiB")
    health = max(worst["health_s"], result["worst_health_s"])
    print(f"targets: errors 0 -> {'met' if result['errors'] == 0 else 'MISSED'}; health < 1 s -> "
          f"{'met' if health < 1 else 'MISSED'}; small request <= 2 s -> "
          f"{'met' if worst['small_s'] <= 2 else 'MISSED'}; idle within 1 s of the disconnects -> "
          f"{'met' if cancelled['busy_after_disconnect_s'] <= 1 else 'MISSED'}")


if __name__ == "__main__":
    main()
