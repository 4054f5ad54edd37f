"""`batchq flower`'s safety rules and option handling, without starting Flower."""

import pytest

from batchq.config import is_local
from batchq.errors import ConfigError
from batchq.observe.flower import TASK_COLUMNS, build


def test_defaults_to_loopback_and_shows_labels_and_progress_columns():
    command = build([], environ={})
    assert command.argv == ["--address=127.0.0.1", f"--tasks_columns={TASK_COLUMNS}"]
    assert "args" in TASK_COLUMNS and "result" in TASK_COLUMNS


@pytest.mark.parametrize("args", [["--address=0.0.0.0"], ["--address", "10.1.2.3"],
                                  ["--address=flower.example.com"], ["--address=::"]])
def test_refuses_a_reachable_address_without_authentication(args):
    with pytest.raises(ConfigError, match="without authentication.*--basic-auth"):
        build(args, environ={})


@pytest.mark.parametrize("args,environ", [
    (["--address=0.0.0.0", "--basic-auth=ops:secret"], {}),
    (["--address", "0.0.0.0", "--basic_auth", "ops:secret"], {}),
    ([], {"FLOWER_ADDRESS": "0.0.0.0", "FLOWER_BASIC_AUTH": "ops:secret"}),
    (["--address=0.0.0.0", "--auth=.*@example\\.com",
      "--auth_provider=flower.views.auth.GithubLoginHandler"], {}),
    (["--address=0.0.0.0"], {"FLOWER_AUTH": ".*@example\\.com",
                             "FLOWER_AUTH_PROVIDER": "flower.views.auth.GoogleAuth2LoginHandler"}),
])
def test_accepts_a_reachable_address_with_basic_auth_or_oauth(args, environ):
    command = build(args, environ=environ)
    assert command.authenticated and command.address == "0.0.0.0"


def test_oauth_needs_a_provider_as_well():
    with pytest.raises(ConfigError):
        build(["--address=0.0.0.0", "--auth=.*@example\\.com"], environ={})


def test_space_separated_values_and_flags_reach_flower_in_its_own_form():
    command = build(["--port", "5600", "--persistent", "--max-tasks", "500",
                     "--tasks_columns=name,args"], environ={})
    assert command.argv == ["--address=127.0.0.1", "--port=5600", "--persistent=True",
                            "--max_tasks=500", "--tasks_columns=name,args"]


@pytest.mark.parametrize("args,message", [
    (["--prot=5555"], "unknown Flower option --prot"),
    (["5555"], "unexpected argument '5555'"),
    (["--port"], "--port needs a value"),
])
def test_mistakes_are_named(args, message):
    with pytest.raises(ConfigError, match=message):
        build(args, environ={})


def test_loopback_addresses():
    assert all(is_local(a) for a in ("127.0.0.1", "127.5.0.1", "::1", "[::1]", "localhost"))
    assert not any(is_local(a) for a in ("0.0.0.0", "::", "192.168.1.5", "example.com"))


def test_the_cli_refuses_with_one_line_and_exit_2(embedded_env):
    from tests.conftest import batchq

    open_to_all = batchq("flower", "--address=0.0.0.0", env=embedded_env)
    assert open_to_all.returncode == 2
    assert open_to_all.stderr.startswith("batchq: error: batchq flower: refusing to listen on "
                                         "0.0.0.0 without authentication")
    assert "Traceback" not in open_to_all.stderr
    embedded = batchq("flower", "--port", "5999", env=embedded_env)
    assert embedded.returncode == 2 and "needs a Redis broker" in embedded.stderr
