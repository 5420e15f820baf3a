"""Whether the request being answered on this thread was given up by its client.

The local server's gate binds the server's own disconnect check (waitress's `waitress.client_disconnected`) for
the request it hands to the scoring script, whose generation stops at the next token once it says so. Where no
server binds one (Azure's inference server, the MLflow model), nothing is ever cancelled.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_current = threading.local()


@contextmanager
def bound(client_gone: Callable[[], bool] | None) -> Iterator[None]:
    """`client_gone` is this thread's `current_check()` for the block."""
    _current.client_gone = client_gone
    try:
        yield
    finally:
        _current.client_gone = None


def current_check() -> Callable[[], bool]:
    """This thread's request's check, to be asked from another thread (the one generating a batch)."""
    client_gone = getattr(_current, "client_gone", None)
    return (lambda: bool(client_gone())) if client_gone else (lambda: False)
