"""The local deployment: Azure ML's inference server app, behind a bearer-key check, on 127.0.0.1.

`python -m phi3_pipeline.targets.local.scoring_server DEPLOYMENT_DIR` reads DEPLOYMENT_DIR/spec.json (model folder,
key file, port), loads the model through serving/score.py's init(), binds 127.0.0.1 only, then
writes DEPLOYMENT_DIR/state.json with the port it got. The key is read from its owner-only file,
never from the command line or the environment, so `ps` cannot show it.
"""

from __future__ import annotations

import hmac
import json
import os
import sys
import threading
from pathlib import Path

from phi3_pipeline.serving import SCORE_SCRIPT
from phi3_pipeline.targets.workspace import write_json_atomic

LOOPBACK = "127.0.0.1"
HEALTH_PATH = "/"
SCORE_PATH = "/score"
# OpenAI-style routes of the catalog's inference server, answered by the same scoring script.
CHAT_COMPLETIONS_PATHS = ("/chat/completions", "/v1/chat/completions")
RETRY_AFTER_S = 1
SPARE_THREADS = 4


def _json(start_response, status: str, payload: dict, *headers: tuple[str, str]) -> list[bytes]:
    body = json.dumps(payload).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers])
    return [body]


class ScoringGate:
    """WSGI middleware in front of the scoring app, so the server stays bounded and responsive:
    - `GET /` (the health probe) is answered here, without the app, whatever the load;
    - every other route needs `Authorization: Bearer <key>` (401);
    - a body over `max_body_bytes` is refused with a JSON 413 (waitress itself refuses any body over twice
      that without reading it, chunked ones included; its errors are JSON too, see below);
    - at most `max_generations` requests are in the app at once: one more is refused at once (503,
      Retry-After), not queued, so a client never waits behind a flood;
    - the OpenAI-style chat routes are served by the scoring route (score.py tells the contract by the body).
    """

    def __init__(self, app, key: str, max_body_bytes: int, max_generations: int):
        self.app = app
        self.expected = f"Bearer {key}".encode()
        self.max_body_bytes = max_body_bytes
        self.generating = threading.BoundedSemaphore(max_generations)

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
        if not self.generating.acquire(blocking=False):
            return _json(start_response, "503 Service Unavailable",
                         {"error": "the server is busy generating other answers; retry shortly"},
                         ("Retry-After", str(RETRY_AFTER_S)))
        try:
            if environ.get("PATH_INFO") in CHAT_COMPLETIONS_PATHS:
                environ["PATH_INFO"] = SCORE_PATH
            answer = self.app(environ, start_response)
            try:
                return list(answer)  # generated in full while the slot is held
            finally:
                getattr(answer, "close", lambda: None)()
        finally:
            self.generating.release()


def answer_waitress_errors_generically() -> None:
    """waitress puts what it could not parse into its own error bodies (a malformed `Authorization` line comes
    back with the key in it) and has no setting against it: its errors are answered as JSON naming only the
    reason."""
    from waitress import utilities

    def to_response(error, ident=None):
        body = json.dumps({"error": error.reason}).encode()
        return f"{error.code} {error.reason}", [("Content-Type", "application/json")], body

    utilities.Error.to_response = to_response


def serve(deployment_dir: Path) -> None:
    import waitress

    answer_waitress_errors_generically()
    spec = json.loads((deployment_dir / "spec.json").read_text(encoding="utf-8"))
    limits = spec["limits"]
    os.environ["AZUREML_ENTRY_SCRIPT"] = str(SCORE_SCRIPT)
    os.environ["AZUREML_MODEL_DIR"] = spec["model_dir"]
    os.environ["SCORING_MAX_NEW_TOKENS"] = str(limits["max_new_tokens"])
    os.environ["SCORING_GENERATION_TIMEOUT_S"] = str(limits["generation_timeout_s"])
    os.environ["SCORING_DEPLOYMENT"] = deployment_dir.name
    key = Path(spec["key_file"]).read_text(encoding="utf-8").strip()

    from azureml_inference_server_http.server.create_app import create

    app = ScoringGate(create(), key, limits["max_request_bytes"], limits["max_concurrent_generations"])
    # threads beyond the generation slots answer health probes and refusals while every slot generates
    server = waitress.create_server(app, host=LOOPBACK, port=spec["port"],
                                    threads=limits["max_concurrent_generations"] + SPARE_THREADS,
                                    max_request_body_size=2 * limits["max_request_bytes"])
    write_json_atomic(deployment_dir / "state.json", {
        "pid": os.getpid(), "host": LOOPBACK, "port": server.effective_port,
        "model_version": spec["model_version"],
    })
    server.run()


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
