"""A Hugging Face cache made by hand, and a Hub on 127.0.0.1 that answers model lookups: how the tests give the
local target a base model by Hub id with no network."""

from __future__ import annotations

import json
from collections.abc import Container, Iterator
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


NOT_FOUND = (404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
             {"error": "Repository not found"})


def gated_refusal(repo_id: str) -> tuple[int, dict, dict]:
    """The Hub's answer to a token that has not been granted a gated model (what `hf_raise_for_status` reads as
    GatedRepoError: the X-Error-Code header, the message in X-Error-Message and the body's `error`)."""
    message = (f"Access to model {repo_id} is restricted and you are not in the authorized list. "
               f"Visit https://huggingface.co/{repo_id} to ask for access.")
    return 403, {"X-Error-Code": "GatedRepo", "X-Error-Message": message}, {"error": message}


@contextmanager
def fake_hub(answers: dict[str, tuple[int, dict, dict]], granted: Container[str] = ()) -> Iterator[str]:
    """A Hub whose `GET /api/models/<repo id>[/revision/<revision>]` (model_info) answers, per repo id, (status,
    headers, body) as the Hub does (its errors carry X-Error-Code: RepoNotFound, RevisionNotFound); its URL, for
    HF_ENDPOINT. As on the Hub, anyone may read a gated model's info (`"gated": "manual"`) and list its files
    (`/tree/`), but its auth check (`/auth-check`) and its files (`/<repo id>/resolve/...`) answer 403 GatedRepo
    unless its id is in `granted` (a set the test may change). It serves no file's content."""

    class Hub(BaseHTTPRequestHandler):
        def do_GET(self, head: bool = False) -> None:  # noqa: N802 - http.server's name
            parts = self.path.split("?")[0].removeprefix("/api/models/").strip("/").split("/")
            repo_id, asked = "/".join(parts[:2]), parts[2] if len(parts) > 2 else "revision"
            status, headers, body = answers.get(repo_id, NOT_FOUND)
            if status == 200 and asked == "tree":
                body = [{"type": "file", "path": file["rfilename"], "size": file["size"], "oid": "0" * 40}
                        for file in body["siblings"]]
            elif status == 200 and asked != "revision":
                status, headers, body = (gated_refusal(repo_id) if body.get("gated") and repo_id not in granted
                                         else (200, {}, {}))
            payload = json.dumps(body).encode()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if not head:
                self.wfile.write(payload)

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's name; how hf_hub_download asks for a file
            self.do_GET(head=True)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    server.daemon_threads = True
    with served_in_a_thread(server.serve_forever, server.shutdown):
        yield f"http://127.0.0.1:{server.server_address[1]}"
    server.server_close()


def model_info(repo_id: str, commit: str, weight_bytes: int, gated: str | bool = False) -> tuple[int, dict, dict]:
    """The Hub's answer for a model at `commit` whose safetensors weigh `weight_bytes` (`gated`: "auto" or
    "manual" for a gated model, whose info anyone may read)."""
    return 200, {}, {"id": repo_id, "modelId": repo_id, "sha": commit, "private": False, "gated": gated,
                     "siblings": [{"rfilename": "config.json", "size": 700},
                                  {"rfilename": "model.safetensors", "size": weight_bytes}]}
