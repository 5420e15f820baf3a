"""The process of a command's temporary Prefect API server: Prefect's app under uvicorn, as Prefect's own
temporary server runs it, on 127.0.0.1 at the port given.

    python -m cli.api_server PORT

Prefect's server modules are imported with the garbage collector paused, then frozen: the import makes
hundreds of thousands of objects, none of them garbage, which the collector would walk over and over (the
import: 3.0 s -> 2.3 s on a 2-core machine). Frozen before the app is built, they are also left out of the full
collection that Prefect's temporary server (PREFECT__SERVER_FINAL) runs as it builds the app (0.40 s -> 0.17 s).
A database at the installed Prefect's schema is not checked for migrations (`cli.prefect_schema`).
"""

import gc
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
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error", lifespan="on")
