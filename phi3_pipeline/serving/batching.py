"""Requests with the same sampling parameters that wait together are answered by one `generate` call.

On a CPU a small model's generation costs mostly per step, not per row: calls for 8 requests answered 3.3 to 3.8 times
as many a second as 8 calls (bench/batched_generate.py). Each request's thread hands its prompt in and waits; when
fewer than `calls` calls run, a waiting thread takes up to `max_batch` waiting prompts of its own parameters
(itself among them when it is early enough in line) and runs their call, then hands each thread its answer.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any


@dataclass
class _Waiting:
    prompt: Any
    stop: Callable[[], bool]
    answer: Any = None
    error: BaseException | None = None
    done: bool = False


class GenerationBatcher:
    """`answer(parameters, prompt, stop)` returns `generate(parameters, prompts, stops)`'s answer for `prompt`,
    generated with the other prompts of the same parameters that wait with it; at most `calls` calls at once,
    each for at most `max_batch` prompts (1: no batching)."""

    def __init__(self, generate: Callable[[Hashable, list, list], list], calls: int, max_batch: int):
        self._generate, self.calls, self.max_batch = generate, calls, max_batch
        self._waiting: dict[Hashable, list[_Waiting]] = defaultdict(list)
        self._running = 0
        self._changed = threading.Condition()

    def answer(self, parameters: Hashable, prompt: Any, stop: Callable[[], bool]) -> Any:
        mine = _Waiting(prompt, stop)
        with self._changed:
            self._waiting[parameters].append(mine)
            while not mine.done:
                if self._running < self.calls and self._waiting.get(parameters):
                    self._run_next(parameters)
                else:
                    self._changed.wait()
        if mine.error is not None:
            raise mine.error
        return mine.answer

    def _run_next(self, parameters: Hashable) -> None:
        """Run the call for the first `max_batch` prompts waiting with `parameters` (the lock is held on entry
        and on return, not during the call)."""
        batch = self._waiting[parameters][:self.max_batch]
        del self._waiting[parameters][:len(batch)]
        if not self._waiting[parameters]:
            del self._waiting[parameters]
        self._running += 1
        self._changed.release()
        try:
            answers = self._generate(parameters, [item.prompt for item in batch], [item.stop for item in batch])
            for item, answer in zip(batch, answers, strict=True):
                item.answer = answer
        except BaseException as error:  # every request of the call gets the call's failure
            for item in batch:
                item.error = error
        finally:
            self._changed.acquire()
            self._running -= 1
            for item in batch:
                item.done = True
            self._changed.notify_all()
