"""Requests with the same parameters answered by one generate call (phi3_pipeline/serving/batching.py): who shares
a call, how many calls run at once, and that every request gets its own answer."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phi3_pipeline.serving.batching import GenerationBatcher


class Recorder:
    """A generate function that answers each prompt with (parameters, prompt), records its calls, and holds its
    first call until released."""

    def __init__(self) -> None:
        self.calls, self.running, self.most_running = [], 0, 0
        self.first_started, self.release = threading.Event(), threading.Event()
        self._lock = threading.Lock()

    def __call__(self, parameters, prompts, stops):
        with self._lock:
            self.calls.append((parameters, list(prompts)))
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            first = len(self.calls) == 1
        if first:
            self.first_started.set()
            assert self.release.wait(10)
        time.sleep(0.001)
        with self._lock:
            self.running -= 1
        return [(parameters, prompt) for prompt in prompts]


def waiting_count(batcher: GenerationBatcher) -> int:
    return sum(len(waiting) for waiting in batcher._waiting.values())


def test_request_queue_requests_that_wait_together_with_the_same_parameters_share_one_call():
    generate = Recorder()
    batcher = GenerationBatcher(generate, calls=1, max_batch=3)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher.answer, "hot", 0, lambda: False)
        assert generate.first_started.wait(10)
        later = [pool.submit(batcher.answer, "hot", prompt, lambda: False) for prompt in range(1, 5)]
        later += [pool.submit(batcher.answer, "cold", prompt, lambda: False) for prompt in range(5, 7)]
        deadline = time.monotonic() + 10
        while waiting_count(batcher) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        generate.release.set()
        assert first.result() == ("hot", 0)
        assert [answer.result() for answer in later] == [("hot", 1), ("hot", 2), ("hot", 3), ("hot", 4),
                                                         ("cold", 5), ("cold", 6)]
    batches = sorted(((parameters, prompts) for parameters, prompts in generate.calls[1:]), key=str)
    assert batches == [("cold", [5, 6]), ("hot", [1, 2, 3]), ("hot", [4])], "same parameters only, at most 3"
    assert generate.most_running == 1


def test_request_queue_a_failed_call_fails_each_of_its_requests_and_later_calls_still_run():
    calls = []

    def generate(parameters, prompts, stops):
        calls.append(prompts)
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return prompts

    batcher = GenerationBatcher(generate, calls=1, max_batch=4)
    with pytest.raises(RuntimeError, match="out of memory"):
        batcher.answer("p", "a", lambda: False)
    assert batcher.answer("p", "b", lambda: False) == "b"


def test_request_queue_each_request_gets_its_own_stop_check_in_its_call():
    seen = []
    batcher = GenerationBatcher(lambda parameters, prompts, stops: seen.append([stop() for stop in stops])
                                or prompts, calls=1, max_batch=4)
    assert batcher.answer("p", 1, lambda: True) == 1
    assert seen == [[True]]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=st.lists(st.tuples(st.sampled_from([(0.7, 32), (0.0, 32), (0.7, 8)]), st.integers()),
                         min_size=1, max_size=40),
       calls=st.integers(1, 3), max_batch=st.integers(1, 6))
def test_request_queue_under_any_mix_every_request_gets_its_own_answer_within_the_limits(requests, calls, max_batch):
    """Generated mixes of parameters from many threads at once: no answer goes to another request, no call mixes
    parameters or holds more than `max_batch`, and no more than `calls` run at once."""
    generate = Recorder()
    generate.release.set()
    batcher = GenerationBatcher(generate, calls=calls, max_batch=max_batch)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda request: batcher.answer(request[0], request[1], lambda: False), requests))
    assert answers == requests
    assert all(len(prompts) <= max_batch for _, prompts in generate.calls)
    assert sum(len(prompts) for _, prompts in generate.calls) == len(requests)
    assert generate.most_running <= calls
    assert waiting_count(batcher) == 0
