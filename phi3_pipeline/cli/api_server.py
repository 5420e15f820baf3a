"""The process of a command's temporary Prefect API server: Prefect's app under uvicorn, as Prefect's own
temporary server runs it, on the listening socket whose file descriptor it is given (see `cli.prefect_api`).

    python -m phi3_pipeline.cli.api_server FD
"""

import os
import socket
import sys
from importlib import import_module

import uvicorn

from phi3_pipeline.cli.prefect_internals import APP_FACTORY, APP_FACTORY_ARGUMENTS, TEMPORARY_SERVER_ENV


def main(descriptor: int) -> None:
    os.environ.update(TEMPORARY_SERVER_ENV)  # before Prefect's settings are first read
    module, factory = APP_FACTORY.split(":")
    app = getattr(import_module(module), factory)(**APP_FACTORY_ARGUMENTS)
    listening = socket.socket(fileno=descriptor)
    uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="on")).run(sockets=[listening])


if __name__ == "__main__":
    main(int(sys.argv[1]))
