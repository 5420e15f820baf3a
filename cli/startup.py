"""What a command does before it imports its modules, and once they are in.

A command started from a terminal starts its temporary Prefect API server first of all, so that the server
loads (a process of its own, seconds) beside the command's own imports; and it pauses the garbage collector
while it imports Prefect and Prompt flow, whose hundreds of thousands of objects, none of them garbage, the
collector would walk over and over (their import: 2.3 s -> 1.9 s on a 2-core machine).
"""

import gc
import sys
from typing import NoReturn

from cli.prefect_api import start_loading_now

FLOW_COMMANDS = ("run", "teardown")  # the console script's commands that run a flow (cli.commands.COMMANDS)


def command_starts(argv: list[str]) -> None:
    gc.disable()
    start_loading_now(argv)


def imports_done() -> None:
    """The collector back on, with what the imports made set aside for good; nothing when it was not paused."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def console_script() -> NoReturn:
    """`phi3-pipeline`: as with the module commands, the server of a command that runs a flow starts first."""
    command, *flags = sys.argv[1:] or [""]
    if command in FLOW_COMMANDS:
        command_starts(flags)
    from cli.commands import console_script as run_command

    run_command()
