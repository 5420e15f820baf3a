"""The process of a command's temporary Prefect API server: Prefect's app under uvicorn, as Prefect's own
temporary server runs it, on the listening socket whose file descriptor it is given (see `cli.prefect_api`).

    python -m cli.api_server FD

Prefect's server modules are imported with the garbage collector paused, then frozen: the import makes
hundreds of thousands of objects, none of them garbage, which the collector would walk over and over (the
import: 3.0 s -> 2.3 s on a 2-core machine). Frozen before the app is built, they are also left out of the full
collection that Prefect's temporary server (PREFECT__SERVER_FINAL) runs as it builds the app (0.40 s -> 0.17 s).
A database at the installed Prefect's schema is not checked for migrations (`cli.prefect_schema`).
"""

import gc
import socket
import sys
from contextlib import nullcontext

gc.disable()

import uvicorn  # noqa: E402 (with the collector paused)
from prefect.server.api.server import create_app  # noqa: E402
from prefect.settings import PREFECT_API_DATABASE_MIGRATE_ON_START, get_current_settings, temporary_settings  # noqa: E402

from cli.prefect_schema import schema_is_current  # noqa: E402

gc.freeze()
current = schema_is_current(get_current_settings())
with temporary_settings({PREFECT_API_DATABASE_MIGRATE_ON_START: False}) if current else nullcontext():
    app = create_app()
    gc.freeze()
    gc.enable()
    listening = socket.socket(fileno=int(sys.argv[1]))
    uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="on")).run(sockets=[listening])
