"""The local deployment: Azure ML's inference server app, behind a bearer-key check, on 127.0.0.1.

`python -m targets.local.scoring_server DEPLOYMENT_DIR` reads DEPLOYMENT_DIR/spec.json (model folder,
key file, port), loads the model through serving/score.py's init(), binds 127.0.0.1 only, then
writes DEPLOYMENT_DIR/state.json with the port it got. The key is read from its owner-only file,
never from the command line or the environment, so `ps` cannot show it.
"""

from __future__ import annotations

import hmac
import json
import os
import sys
from pathlib import Path

from targets.local.workspace import write_json_atomic

LOOPBACK = "127.0.0.1"
HEALTH_PATH = "/"
SCORE_PATH = "/score"
# OpenAI-style routes of the catalog's inference server, answered by the same scoring script.
CHAT_COMPLETIONS_PATHS = ("/chat/completions", "/v1/chat/completions")
SCORE_SCRIPT = Path(__file__).resolve().parents[2] / "serving" / "score.py"


class BearerKeyAuth:
    """WSGI middleware: every route but the health probe needs `Authorization: Bearer <key>`; the OpenAI-style
    chat routes are served by the scoring route."""

    def __init__(self, app, key: str):
        self.app = app
        self.expected = f"Bearer {key}".encode()

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == HEALTH_PATH and environ.get("REQUEST_METHOD") == "GET":
            return self.app(environ, start_response)
        given = environ.get("HTTP_AUTHORIZATION", "").encode()
        if hmac.compare_digest(given, self.expected):
            if environ.get("PATH_INFO") in CHAT_COMPLETIONS_PATHS:
                environ["PATH_INFO"] = SCORE_PATH  # score.py tells the contract by the body
            return self.app(environ, start_response)
        body = json.dumps({"error": "missing or invalid key: send 'Authorization: Bearer <key>'"}).encode()
        start_response("401 Unauthorized", [("Content-Type", "application/json"),
                                            ("Content-Length", str(len(body))),
                                            ("WWW-Authenticate", "Bearer")])
        return [body]


def serve(deployment_dir: Path) -> None:
    import waitress

    spec = json.loads((deployment_dir / "spec.json").read_text(encoding="utf-8"))
    os.environ["AZUREML_ENTRY_SCRIPT"] = str(SCORE_SCRIPT)
    os.environ["AZUREML_MODEL_DIR"] = spec["model_dir"]
    os.environ["PHI3_MAX_NEW_TOKENS_LIMIT"] = str(spec["max_new_tokens_limit"])
    key = Path(spec["key_file"]).read_text(encoding="utf-8").strip()

    from azureml_inference_server_http.server.create_app import create

    app = BearerKeyAuth(create(), key)
    server = waitress.create_server(app, host=LOOPBACK, port=spec["port"], threads=4)
    write_json_atomic(deployment_dir / "state.json", {
        "pid": os.getpid(), "host": LOOPBACK, "port": server.effective_port,
        "model_version": spec["model_version"],
    })
    server.run()


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
