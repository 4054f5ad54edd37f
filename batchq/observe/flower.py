"""`batchq flower`: Flower for batchq's Celery app, safe by default.

Flower's own options and FLOWER_* variables pass through untouched. What batchq adds:
it listens on 127.0.0.1 unless told otherwise, it refuses any other address without
authentication, it accepts `--name value` as well as Flower's `--name=value`, and its task
list shows each chunk's label (args) and progress or summary (result) by default.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from batchq.config import is_local
from batchq.errors import ConfigError

# Columns of Flower's task list: the chunk label (args) and its progress or summary (result)
# beside Flower's usual ones; the uuid is one click away, on the task's own page.
TASK_COLUMNS = "name,state,args,result,received,runtime,worker"


def _flower_options():
    # Flower declares its options in tornado's global registry when this module is imported.
    import flower.options  # noqa: F401
    from tornado.options import options

    # name (with dashes) -> tornado Option, whose type tells flags from options with values
    return options._options


@dataclass(frozen=True)
class FlowerCommand:
    argv: list[str]  # what follows `celery -A batchq.queue.app flower`
    address: str
    authenticated: bool


def _normalise(args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """`--name value` and `--name=value` both become `--name=value` (tornado reads only the
    latter and would silently drop the former). Returns the args and the options they set."""
    known = _flower_options()
    out: list[str] = []
    given: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"batchq flower: unexpected argument {arg!r}; Flower takes only "
                              "options, such as --port=5555 (see `batchq flower --help`)")
        name, has_value, value = arg[2:].partition("=")
        key = name.replace("-", "_")
        option = known.get(name.replace("_", "-"))  # tornado keys its options dashed
        if option is None:
            raise ConfigError(f"batchq flower: unknown Flower option --{name} "
                              "(`celery flower --help` lists them)")
        if not has_value:
            takes_value = option.type is not bool
            if takes_value:
                if i + 1 >= len(args) or args[i + 1].startswith("--"):
                    raise ConfigError(f"batchq flower: --{name} needs a value")
                value, i = args[i + 1], i + 1
            else:
                value = "True"
        out.append(f"--{key}={value}")
        given[key] = value
        i += 1
    return out, given


def build(args: Sequence[str], environ: Mapping[str, str] | None = None) -> FlowerCommand:
    """Check the options and say what Flower will be started with. Raises ConfigError for an
    address other than loopback without --basic-auth or OAuth (--auth with --auth_provider)."""
    env = os.environ if environ is None else environ
    argv, given = _normalise(args)

    def setting(name: str) -> str:
        return given.get(name) or env.get(f"FLOWER_{name.upper()}", "")

    address = setting("address") or "127.0.0.1"
    socket_only = bool(setting("unix_socket"))
    authenticated = bool(setting("basic_auth")) or bool(setting("auth") and setting("auth_provider"))
    if not socket_only and not is_local(address) and not authenticated:
        raise ConfigError(
            f"batchq flower: refusing to listen on {address} without authentication: anyone "
            "who can reach it could see and revoke every task. Add --basic-auth=USER:PASSWORD "
            "(or FLOWER_BASIC_AUTH), or Flower's OAuth options (--auth=REGEX with "
            "--auth_provider=...), or listen on 127.0.0.1")
    if "address" not in given:
        argv.insert(0, f"--address={address}")
    if "tasks_columns" not in given and not env.get("FLOWER_TASKS_COLUMNS"):
        argv.append(f"--tasks_columns={TASK_COLUMNS}")
    return FlowerCommand(argv, address, authenticated)


def exec_flower(command: FlowerCommand, broker_url: str) -> None:
    """Replace this process with Flower (signals and exit codes are then Flower's own)."""
    if broker_url.startswith("sqla+"):
        raise ConfigError("batchq flower needs a Redis broker: Flower follows the workers through "
                          "broker events, which the embedded SQLite broker cannot carry. Set "
                          "BATCHQ_BROKER_URL=redis://...")
    argv = [sys.executable, "-m", "celery", "-A", "batchq.queue.app", "flower", *command.argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
