"""A Hugging Face cache made by hand, and a Hub on 127.0.0.1 that answers model lookups: how the tests give the
local target a base model by Hub id with no network."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.conftest import served_in_a_thread

REPO_ID = "phi3-test/tiny-phi"
FIRST_COMMIT = "1" * 40
SECOND_COMMIT = "2" * 40
CORPUS = ["Microsoft was founded by Bill Gates and Paul Allen.", "Paris is the capital of France.",
          "The sky is blue because of Rayleigh scattering.", "A GPU runs many small computations at once."] * 8


def make_checkpoint(folder: Path) -> Path:
    """A small Phi-3-architecture checkpoint with fresh weights and the built-in model's tokenizer and chat
    template (what a Hub model folder holds: config, tokenizer, safetensors)."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    from phi3_pipeline.targets.local.training_job import TINY_ARCHITECTURE, build_tokenizer

    tokenizer = build_tokenizer(CORPUS)
    torch.manual_seed(0)
    model = Phi3ForCausalLM(Phi3Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                       **TINY_ARCHITECTURE))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def cache_snapshot(cache: Path, checkpoint: Path, commit: str, repo_id: str = REPO_ID, ref: str = "main") -> Path:
    """`checkpoint` as the Hugging Face cache holds a model at `commit` (`models--org--name/snapshots/<commit>`),
    with `refs/<ref>` naming that commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in checkpoint.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snapshot


@contextmanager
def fake_hub(answers: dict[str, tuple[int, dict, dict]]) -> Iterator[str]:
    """A Hub whose `GET /api/models/<repo id>/revision/<revision>` answers, per repo id, (status, headers, body)
    as the Hub does (its errors carry X-Error-Code: GatedRepo, RepoNotFound, RevisionNotFound); its URL, for
    HF_ENDPOINT."""
    requests_seen: list[str] = []

    class Hub(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            requests_seen.append(self.path)
            repo_id = self.path.split("?")[0].removeprefix("/api/models/").split("/revision/")[0]
            status, headers, body = answers.get(repo_id, (404, {"X-Error-Code": "RepoNotFound"}, {}))
            payload = json.dumps(body).encode()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    server.daemon_threads = True
    with served_in_a_thread(server.serve_forever, server.shutdown):
        yield f"http://127.0.0.1:{server.server_address[1]}"
    server.server_close()


def model_info(repo_id: str, commit: str, weight_bytes: int) -> tuple[int, dict, dict]:
    """The Hub's answer for a model at `commit` whose safetensors weigh `weight_bytes`."""
    return 200, {}, {"id": repo_id, "modelId": repo_id, "sha": commit, "private": False, "gated": False,
                     "siblings": [{"rfilename": "config.json", "size": 700},
                                  {"rfilename": "model.safetensors", "size": weight_bytes}]}
