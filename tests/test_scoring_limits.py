"""The scoring server stays bounded: its request parser turns any body into a parsed request or a 400 (never a
5xx), and its gate answers health probes at once, refuses oversized bodies (413), queues requests beyond the
generation slots (503 with Retry-After only beyond the queue's bound or wait limit) and cancels the generation of
a client that went away. The gate runs here in front of a stand-in app on a real waitress
server; the real model behind it is tested in test_local_target.py."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import waitress
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phi3_pipeline.targets.local.scoring_server import (
    GenerationQueue,
    ScoringGate,
    answer_waitress_errors_generically,
    answered_at_once,
    server_options,
)
from tests.conftest import ROOT, served_in_a_thread

sys.path.insert(0, str(ROOT / "phi3_pipeline" / "serving"))
from score import BadRequest, parse_request  # noqa: E402

KEY = "k" * 43
AUTH = {"Authorization": f"Bearer {KEY}"}
USER = [{"role": "user", "content": "Who founded Microsoft?"}]


def valid(**parameters) -> dict:
    return {"input_data": {"input_string": USER, "parameters": parameters}}


@pytest.mark.parametrize("raw", [
    "[" * 10_000 + "]" * 10_000,  # nesting past Python's recursion limit
    json.dumps(valid()).replace("Who founded", "\\ud800 founded"),  # a lone surrogate in content
    json.dumps(valid(temperature=1e-320)),  # probabilities would become NaN
    '{"input_data": {"input_string": [{"role": "user", "content": "x"}], "parameters": {"max_new_tokens": '
    + "9" * 5000 + "}}}",  # more digits than Python converts
    b"\xff\xfe not utf-8",
    *[json.dumps({"input_data": {"input_string": USER, "parameters": falsy}}) for falsy in (False, 0, "", [])],
    json.dumps({"messages": USER, "max_tokens": True}),
    json.dumps({"messages": [], "max_tokens": 8}),
])
def test_malformed_bodies_that_used_to_be_500s_are_400s(raw):
    with pytest.raises(BadRequest):
        parse_request(raw)


def test_both_contracts_parse_to_the_same_request():
    assert parse_request(json.dumps(valid(temperature=0, max_new_tokens=8)))[:3] == (USER, 0.0, 8)
    assert parse_request(json.dumps({"messages": USER, "temperature": 0, "max_tokens": 8})) == \
        (USER, 0.0, 8, "chat_completions")


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                                        max_size=4), max_leaves=12)
MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "robot", 1]),
                                           "content": st.one_of(st.text(), st.integers(), st.none())}), max_size=3)
PARAMETERS = st.one_of(JSON, st.fixed_dictionaries({}, optional={
    "temperature": st.one_of(st.floats(allow_nan=True), st.integers(), st.booleans(), st.text()),
    "max_new_tokens": st.one_of(st.integers(), st.floats(), st.booleans(), st.none())}))
BODIES = st.one_of(
    JSON,
    st.builds(lambda m, p: {"input_data": {"input_string": m, "parameters": p}}, MESSAGES, PARAMETERS),
    st.builds(lambda m, p: {"messages": m, **(p if isinstance(p, dict) else {})}, MESSAGES, PARAMETERS),
)


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=BODIES, as_text=st.booleans())
def test_any_body_is_parsed_or_refused_with_a_400_never_an_error(body, as_text):
    raw = json.dumps(body) if as_text else body  # Python writes NaN and Infinity too: the parser sees them
    try:
        messages, temperature, max_tokens, contract = parse_request(raw)
    except BadRequest as refusal:
        assert str(refusal)
        return
    assert messages and (temperature == 0 or 0.01 <= temperature <= 2) and 1 <= max_tokens <= 256
    assert contract in ("input_data", "chat_completions")


LIMITS = {"max_concurrent_generations": 1, "max_batch_size": 1, "max_queued_requests": 2, "queue_wait_s": 3.0,
          "max_request_bytes": 4096}


@pytest.fixture
def gate():
    """The gate (1 generation slot, 2 queue places waiting up to 3 s, 4 KiB bodies) on a real waitress server with
    the local server's options, before an app whose requests block until released."""
    release, entered = threading.Event(), threading.Semaphore(0)

    def slow_app(environ, start_response):
        entered.release()
        release.wait(30)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"output": "done"}']

    answer_waitress_errors_generically()
    queue = GenerationQueue(answered_at_once(LIMITS), LIMITS["max_queued_requests"], LIMITS["queue_wait_s"])
    server = waitress.create_server(ScoringGate(slow_app, KEY, LIMITS["max_request_bytes"], queue), host="127.0.0.1",
                                    port=0, **server_options(LIMITS))
    with served_in_a_thread(server.run, lambda: (release.set(), server.close())):
        yield f"http://127.0.0.1:{server.effective_port}", release, entered


def test_request_queue_holds_requests_beyond_the_slots_and_refuses_only_beyond_its_bound(gate):
    """One generating, two queued (answered once the slot frees), a fourth refused at once with Retry-After;
    the health probe answers at once throughout."""
    base, release, entered = gate
    with ThreadPoolExecutor(4) as pool:
        busy = pool.submit(requests.post, f"{base}/score", json=valid(), headers=AUTH, timeout=30)
        assert entered.acquire(timeout=10), "the first request is generating"
        queued = [pool.submit(requests.post, f"{base}/v1/chat/completions", json={"messages": USER}, headers=AUTH,
                              timeout=30) for _ in range(2)]
        time.sleep(0.5)  # both are in the queue
        started = time.monotonic()
        assert requests.get(f"{base}/", timeout=1).json() == {"status": "healthy"}
        refused = requests.post(f"{base}/score", json=valid(), headers=AUTH, timeout=2)
        assert time.monotonic() - started < 1
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert "2 requests wait already (local.max_queued_requests)" in refused.json()["error"]
        release.set()
        assert busy.result().json() == {"output": "done"}
        assert [answer.result().json() for answer in queued] == [{"output": "done"}] * 2


def test_request_queue_health_probe_is_answered_while_clients_hold_more_connections_than_waitress_default(gate):
    """Clients' connections beyond waitress's default limit of 100 (a flood of clients, and those closing) do not
    keep the health probe from being accepted."""
    base, _, _ = gate
    port = int(base.rsplit(":", 1)[1])
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(120)]
    try:
        started = time.monotonic()
        assert requests.get(f"{base}/", timeout=5).json() == {"status": "healthy"}
        assert time.monotonic() - started < 1
    finally:
        for connection in held:
            connection.close()


def test_request_queue_refuses_a_request_that_waited_past_its_limit(gate):
    base, release, entered = gate
    with ThreadPoolExecutor(2) as pool:
        busy = pool.submit(requests.post, f"{base}/score", json=valid(), headers=AUTH, timeout=30)
        assert entered.acquire(timeout=10)
        started = time.monotonic()
        waited = requests.post(f"{base}/score", json=valid(), headers=AUTH, timeout=10)
        assert 3 <= time.monotonic() - started < 5
        assert waited.status_code == 503 and "within 3 s (local.queue_wait_s)" in waited.json()["error"]
        release.set()
        assert busy.result().ok


def test_oversized_bodies_up_to_16_mb_get_the_json_413_and_a_wrong_key_a_401(gate):
    """Every over-limit body a hostile client sends, small or 16 MB, plain or chunked, gets the same JSON 413 (not a
    reset connection)."""
    base, _, _ = gate
    sizes = [5000, *(2**20 * megabytes for megabytes in (1, 2, 3, 4, 6, 8, 12, 16))]
    for size in sizes:
        too_big = requests.post(f"{base}/score", data=b"x" * size, headers={**AUTH, "Content-Type": "application/json"},
                                timeout=30)
        assert too_big.status_code == 413 and "local.max_request_bytes" in too_big.json()["error"], size
    chunked = requests.post(f"{base}/score", data=iter([b"x" * 2**20] * 4), headers=AUTH, timeout=30)
    assert chunked.status_code == 413 and "local.max_request_bytes" in chunked.json()["error"]
    assert requests.get(f"{base}/", timeout=1).ok
    assert requests.post(f"{base}/score", json=valid(), timeout=5).status_code == 401


def test_disconnect_cancels_the_generation_of_a_client_that_went_away_within_a_second():
    """The gate hands the scoring script waitress's own disconnect check: a generation (here a stand-in that
    runs until told to stop) sees its client gone within a second of the socket closing, and the slot frees."""
    from phi3_pipeline.serving import cancellation

    entered, stopped_after = threading.Event(), []

    def generating_app(environ, start_response):  # the first request generates until cancelled, later ones not
        entered.set()
        deadline = time.monotonic() + (0 if stopped_after else 30)
        while time.monotonic() < deadline and not cancellation.current_check()():
            time.sleep(0.01)
        stopped_after.append(time.monotonic())
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"output": "cut short"}']

    queue = GenerationQueue(answered_at_once(LIMITS), LIMITS["max_queued_requests"], 30)
    server = waitress.create_server(ScoringGate(generating_app, KEY, 4096, queue), host="127.0.0.1", port=0,
                                    **server_options(LIMITS))
    with served_in_a_thread(server.run, server.close):
        body = json.dumps(valid()).encode()
        with socket.create_connection(("127.0.0.1", server.effective_port), timeout=5) as client:
            client.sendall(f"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            assert entered.wait(10), "the generation started"
        gone_at = time.monotonic()  # the client closed its socket
        deadline = gone_at + 5
        while not stopped_after and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stopped_after and stopped_after[0] - gone_at < 1, "the generation ran on after its client went away"
        answer = requests.post(f"http://127.0.0.1:{server.effective_port}/score", json=valid(), headers=AUTH,
                               timeout=5)
        assert answer.json() == {"output": "cut short"}, "the slot came free"


def test_a_malformed_header_line_is_refused_without_echoing_it(gate):
    base, _, _ = gate
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(f"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization Bearer {KEY}\r\n"
                           "Content-Length: 2\r\n\r\n{}".encode())
        answer = connection.makefile("rb").read().decode(errors="replace")  # all of it: the server closes
    assert " 400 Bad Request" in answer.splitlines()[0] and KEY not in answer and '{"error": "Bad Request"}' in answer
