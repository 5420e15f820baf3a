"""The local deployment: Azure ML's inference server app, behind a bearer-key check, on 127.0.0.1.

`python -m phi3_pipeline.targets.local.scoring_server DEPLOYMENT_DIR` reads DEPLOYMENT_DIR/spec.json (model folder,
key file, port, limits), fits the limits to the model and this machine's free memory (server_sizing.py), loads the
model through serving/score.py's init(), binds 127.0.0.1 only, then writes DEPLOYMENT_DIR/state.json with the port
it got and the limits it holds to. The key is read from its owner-only file,
never from the command line or the environment, so `ps` cannot show it.
"""

from __future__ import annotations

import hmac
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from phi3_pipeline.config.errors import ConfigError
from phi3_pipeline.serving import SCORE_SCRIPT, cancellation
from phi3_pipeline.serving.chat_model import find_checkpoint, placement
from phi3_pipeline.targets.local import server_sizing
from phi3_pipeline.targets.workspace import write_json_atomic

LOOPBACK = "127.0.0.1"
CONFIG_ERROR_PREFIX = "error: "  # a server that cannot serve this model says why on its log's last line
HEALTH_PATH = "/"
SCORE_PATH = "/score"
# OpenAI-style routes of the catalog's inference server, answered by the same scoring script.
CHAT_COMPLETIONS_PATHS = ("/chat/completions", "/v1/chat/completions")
RETRY_AFTER_S = 1
SPARE_THREADS = 32
# Open connections waitress keeps per thread. Its default limit (100 in all) stops it accepting while clients that
# were answered and closed still count, until its loop reaps them: under 64 clients sending at once, the health
# probe then waited 1.1 s to be accepted (bench/load_scoring.py); with room for 5 per thread, 0.05 s.
CONNECTIONS_PER_THREAD = 5
# Bodies waitress reads before the gate answers 413 (larger ones it refuses unread, closing the connection).
WAITRESS_BODY_CAP = 32 * 1024 * 1024
# How long a thread may hold the interpreter before another gets it (Python's default: 5 ms): generations hold it
# between their tensor operations, and under a flood of requests each thread waits its turn behind all the others
SWITCH_INTERVAL_S = 0.0005
# How often a queued request looks whether its client is still there.
DISCONNECT_POLL_S = 0.2
GONE = "the client went away"


def _json(start_response, status: str, payload: dict, *headers: tuple[str, str]) -> list[bytes]:
    body = json.dumps(payload).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers])
    return [body]


class GenerationQueue:
    """At most `slots` requests are answered at once; up to `max_waiting` more wait, each at most `wait_s`, for a
    slot, as Azure's managed endpoints queue before they answer 429. Beyond that, or for a waiter whose client
    has gone, no slot."""

    def __init__(self, slots: int, max_waiting: int, wait_s: float):
        self._slots = threading.BoundedSemaphore(slots)
        self._waiting, self._lock = 0, threading.Lock()
        self.max_waiting, self.wait_s = max_waiting, wait_s

    def enter(self, client_gone: Callable[[], bool]) -> str | None:
        """None once the caller holds a slot (it must `leave()`), else why not: full, timed out, or gone."""
        if self._slots.acquire(blocking=False):
            return None
        with self._lock:
            if self._waiting >= self.max_waiting:
                return f"the server is busy: {self.max_waiting} requests wait already (local.max_queued_requests)"
            self._waiting += 1
        try:
            deadline = time.monotonic() + self.wait_s
            while (left := deadline - time.monotonic()) > 0:
                if client_gone():
                    return GONE
                if self._slots.acquire(timeout=min(left, DISCONNECT_POLL_S)):
                    return None
            return f"no generation slot came free within {self.wait_s:g} s (local.queue_wait_s)"
        finally:
            with self._lock:
                self._waiting -= 1

    def leave(self) -> None:
        self._slots.release()


class ScoringGate:
    """WSGI middleware in front of the scoring app, so the server stays bounded and responsive:
    - `GET /` (the health probe) is answered here, without the app, whatever the load;
    - every other route needs `Authorization: Bearer <key>` (401);
    - a body over `max_body_bytes` is refused with a JSON 413 (waitress reads bodies up to WAITRESS_BODY_CAP,
      so that any body up to there gets this answer, and refuses larger ones unread; its errors are JSON too);
    - requests beyond those answered at once wait in `queue`; beyond its bound or its wait limit, a 503 with
      Retry-After;
    - a request whose client went away leaves the queue, and its generation stops at the next token;
    - the OpenAI-style chat routes are served by the scoring route (score.py tells the contract by the body).
    """

    def __init__(self, app, key: str, max_body_bytes: int, queue: GenerationQueue):
        self.app = app
        self.expected = f"Bearer {key}".encode()
        self.max_body_bytes = max_body_bytes
        self.queue = queue

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == HEALTH_PATH and environ.get("REQUEST_METHOD") == "GET":
            return _json(start_response, "200 OK", {"status": "healthy"})
        if not hmac.compare_digest(environ.get("HTTP_AUTHORIZATION", "").encode(), self.expected):
            return _json(start_response, "401 Unauthorized",
                         {"error": "missing or invalid key: send 'Authorization: Bearer <key>'"},
                         ("WWW-Authenticate", "Bearer"))
        length = environ.get("CONTENT_LENGTH") or "0"
        if not length.isdigit() or int(length) > self.max_body_bytes:
            return _json(start_response, "413 Request Entity Too Large",
                         {"error": f"request body over {self.max_body_bytes} bytes (local.max_request_bytes)"})
        client_gone = environ.get("waitress.client_disconnected", lambda: False)
        refusal = self.queue.enter(client_gone)
        if refusal is not None:
            return _json(start_response, "503 Service Unavailable", {"error": refusal},
                         ("Retry-After", str(RETRY_AFTER_S)))
        try:
            if environ.get("PATH_INFO") in CHAT_COMPLETIONS_PATHS:
                environ["PATH_INFO"] = SCORE_PATH
            with cancellation.bound(client_gone):
                answer = self.app(environ, start_response)
                try:
                    return list(answer)  # generated in full while the slot is held
                finally:
                    getattr(answer, "close", lambda: None)()
        finally:
            self.queue.leave()


def answered_at_once(limits: dict) -> int:
    """Requests the scoring script answers at once: its generate calls, each for a batch (serving/batching.py)."""
    return limits["max_concurrent_generations"] * limits["max_batch_size"]


def server_options(limits: dict) -> dict:
    """waitress's: a thread for every request answered at once and every queue place, and spare ones that answer
    health probes and refusals while all of those are taken; room for the connections of that many clients and of
    those closing; a look-ahead read, which is how waitress sees a client go away."""
    threads = answered_at_once(limits) + limits["max_queued_requests"] + SPARE_THREADS
    return {"threads": threads, "connection_limit": CONNECTIONS_PER_THREAD * threads,
            "max_request_body_size": max(2 * limits["max_request_bytes"], WAITRESS_BODY_CAP),
            "channel_request_lookahead": 1}


def answer_waitress_errors_generically() -> None:
    """waitress puts what it could not parse into its own error bodies (a malformed `Authorization` line comes
    back with the key in it) and has no setting against it: its errors are answered as JSON naming only the
    reason."""
    from waitress import utilities

    def to_response(error, ident=None):
        body = json.dumps({"error": error.reason}).encode()
        return f"{error.code} {error.reason}", [("Content-Type", "application/json")], body

    utilities.Error.to_response = to_response


def share_the_cores(generations: int) -> None:
    """Each generation computes on its share of the cores (torch would give each all of them: generations at once
    would then run more threads than there are cores, and the threads answering probes and refusals would wait)."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // generations))


def fitted_to_the_model(spec: dict) -> dict:
    """The spec's limits fitted to the model and to the free memory of the device it will answer on (said in the
    server's log where they were cut)."""
    import psutil
    import torch

    device, dtype = placement(torch)
    free = torch.cuda.mem_get_info()[0] if device == "cuda" else psutil.virtual_memory().available
    config, weights_bytes = server_sizing.served_shape(find_checkpoint(spec["model_dir"]))
    limits, notes = server_sizing.fitted_limits(spec["limits"], config, weights_bytes, free, dtype.itemsize,
                                                "GPU" if device == "cuda" else "CPU")
    for note in notes:
        print(note, flush=True)
    return limits


def serve(deployment_dir: Path) -> None:
    import waitress

    answer_waitress_errors_generically()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    spec = json.loads((deployment_dir / "spec.json").read_text(encoding="utf-8"))
    limits = fitted_to_the_model(spec)
    os.environ["AZUREML_ENTRY_SCRIPT"] = str(SCORE_SCRIPT)
    os.environ["AZUREML_MODEL_DIR"] = spec["model_dir"]
    os.environ["SCORING_MAX_NEW_TOKENS"] = str(limits["max_new_tokens"])
    os.environ["SCORING_GENERATION_TIMEOUT_S"] = str(limits["generation_timeout_s"])
    os.environ["SCORING_MAX_CONCURRENT_GENERATIONS"] = str(limits["max_concurrent_generations"])
    os.environ["SCORING_MAX_BATCH_SIZE"] = str(limits["max_batch_size"])
    os.environ["SCORING_DEPLOYMENT"] = deployment_dir.name
    if limits["max_context_tokens"]:
        os.environ["SCORING_MAX_CONTEXT_TOKENS"] = str(limits["max_context_tokens"])
    key = Path(spec["key_file"]).read_text(encoding="utf-8").strip()
    share_the_cores(limits["max_concurrent_generations"])

    from azureml_inference_server_http.server.create_app import create

    queue = GenerationQueue(answered_at_once(limits), limits["max_queued_requests"], limits["queue_wait_s"])
    app = ScoringGate(create(), key, limits["max_request_bytes"], queue)
    server = waitress.create_server(app, host=LOOPBACK, port=spec["port"], **server_options(limits))
    write_json_atomic(deployment_dir / "state.json", {
        "pid": os.getpid(), "host": LOOPBACK, "port": server.effective_port,
        "model_version": spec["model_version"], "limits": limits,
    })
    server.run()


if __name__ == "__main__":
    try:
        serve(Path(sys.argv[1]))
    except ConfigError as error:  # what the pipeline reports as it is: the last line of the server's log
        print(f"{CONFIG_ERROR_PREFIX}{error}", flush=True)
        sys.exit(2)
