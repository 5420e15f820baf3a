"""Load on the local scoring server: N clients for T seconds, then 1 MB prompts beside a health probe.

    python bench/load_scoring.py [--clients 16] [--seconds 60] [--workspace DIR]

Trains and deploys the built-in model in a fresh workspace (about a minute) unless --workspace names one
whose live deployment should be used; what it started, it stops. Clients honour 503's Retry-After.
Prints, for the steady load, requests, errors (anything but 200 and
503), 503 refusals, p50/p95 latency and the server's peak RSS; then for the flood (4 clients sending 1 MB
prompts for 10 s) the worst health-probe and small-request latency of a fifth client.
Targets: 0 errors under the steady load; health probe < 1 s and a small request answered or refused
(503) within 2 s during the flood.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phi3_pipeline.chat_data.split_files import split_and_write  # noqa: E402
from phi3_pipeline.config.settings import PipelineSettings  # noqa: E402
from phi3_pipeline.targets.local.target import LocalTarget  # noqa: E402

SMALL = {"input_data": {"input_string": [{"role": "user", "content": "Who founded Microsoft?"}],
                        "parameters": {"temperature": 0.7, "max_new_tokens": 32}}}
HUGE = {"input_data": {"input_string": [{"role": "user", "content": "x" * 1_000_000}]}}


def live_server(workspace: Path | None) -> tuple[str, dict, int, LocalTarget | None]:
    """(scoring URI, auth header, server pid, the target to tear down if this made the deployment)."""
    settings = PipelineSettings(local={"workspace_dir": workspace or Path(tempfile.mkdtemp()) / "ws"},
                                training={"epochs": 3, "base_pretrain_steps": 40}, dataset={"sample_size": 200})
    target = LocalTarget(settings)
    deployment, made = target.live_deployment(), None
    if deployment is None:
        made = target
        target.ensure_identity()
        dataset = target.store_dataset(split_and_write(settings.dataset, target.scratch_dir()))
        name = target.job_name(dataset.content_hash)
        target.find_or_submit_job(name, dataset)
        while target.job_status(name).state not in ("Completed", "Failed", "Lost"):
            time.sleep(1)
        deployment = target.go_live(target.deploy(target.register_model(target.job_result(name), dataset)))
    state = target.endpoint.server_state(target.endpoint.deployment_dir(deployment.deployment_name))
    return deployment.scoring_uri, {"Authorization": f"Bearer {target.ws.read_key()}"}, state["pid"], made


def peak_rss(pid: int, stop: threading.Event, peak: list[float]) -> None:
    process = psutil.Process(pid)
    while not stop.is_set():
        peak[0] = max(peak[0], process.memory_info().rss / 2**20)
        time.sleep(0.2)


def steady(url: str, auth: dict, clients: int, seconds: float) -> dict:
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
            if code == 503:  # a well-behaved client waits as told
                time.sleep(float(response.headers.get("Retry-After", 1)))

    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(client)
    ok = [lat for lat, code in zip(latencies, codes, strict=True) if code == 200]
    return {"requests": len(codes), "ok": len(ok), "refused_503": codes.count(503),
            "errors": sum(code not in (200, 503) for code in codes),
            "p50_s": statistics.median(ok) if ok else None,
            "p95_s": statistics.quantiles(ok, n=20)[18] if len(ok) > 1 else None}


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
    parser.add_argument("--workspace", type=Path)
    args = parser.parse_args()
    url, auth, pid, made = live_server(args.workspace)
    stop, peak = threading.Event(), [0.0]
    threading.Thread(target=peak_rss, args=(pid, stop, peak), daemon=True).start()
    try:
        result = steady(url, auth, args.clients, args.seconds)
        print(f"steady: {args.clients} clients x {args.seconds:g} s (503s honour Retry-After): {result}")
        worst = flood(url, auth)
    finally:
        stop.set()
        if made is not None:  # the bench started this server: it stops it
            made.teardown()
    print(f"flood: 4 clients sending 1 MB prompts: worst health probe {worst['health_s']:.3f} s, worst small "
          f"request {worst['small_s']:.3f} s (answers {sorted(worst['small_codes'])})")
    print(f"server peak RSS: {peak[0]:.0f} MiB")
    print(f"targets: errors 0 -> {'met' if result['errors'] == 0 else 'MISSED'}; health < 1 s -> "
          f"{'met' if worst['health_s'] < 1 else 'MISSED'}; small request <= 2 s -> "
          f"{'met' if worst['small_s'] <= 2 else 'MISSED'}")


if __name__ == "__main__":
    main()
