"""No container engine runs here, so the deployment files are proven by reading them: every
batchq command in them parses with the real CLI, every profile exists and loads, every
variable is documented, and the properties the operations section promises hold."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import yaml

from batchq.cli import cli
from batchq.observe import flower
from batchq.worker.boot import read_profile

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
# Each compose file and the example environment file that documents its variables.
COMPOSE_FILES = {"compose.yaml": "env.example", "worker-host.yaml": "worker-host.env.example"}
VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def documented(env_file: Path) -> dict[str, str]:
    """NAME=value lines that have a comment line somewhere above them in their block."""
    found, commented = {}, False
    for line in env_file.read_text().splitlines():
        if line.startswith("#"):
            commented = True
        elif "=" in line:
            name, _, value = line.partition("=")
            assert commented, f"{env_file.name}: {name} has no comment saying what it is"
            found[name] = value
        else:
            commented = False
    return found


def substitute(value: str, env: dict[str, str]) -> str:
    return VARIABLE.sub(lambda m: env.get(m.group(1)) or m.group(2) or "", value)


def batchq_services(name: str):
    spec = yaml.safe_load((DOCKER / name).read_text())
    for service, body in spec["services"].items():
        if body.get("image", "").startswith("batchq"):
            yield service, body


def parse_batchq(argv: list[str]) -> tuple[click.Command, click.Context]:
    """Parse argv exactly as `batchq ARGV` would, without running it. Raises click's usage
    errors for an unknown command or option, a missing argument or a bad value."""
    ctx = cli.make_context("batchq", list(argv))
    command: click.Command = cli
    while isinstance(command, click.Group):
        name, command, rest = command.resolve_command(ctx, ctx.protected_args + ctx.args)
        assert command is not None, f"no batchq command {name}"
        ctx = command.make_context(name, rest, parent=ctx)
    return command, ctx


@pytest.mark.parametrize("compose", sorted(COMPOSE_FILES))
def test_every_service_command_is_a_real_batchq_command(compose):
    env = documented(DOCKER / COMPOSE_FILES[compose])
    services = dict(batchq_services(compose))
    assert services, f"{compose} runs no batchq service"
    for service, body in services.items():
        assert "entrypoint" not in body, f"{service}: the image's entrypoint is batchq"
        argv = [substitute(str(arg), env) for arg in body["command"]]
        command, ctx = parse_batchq(argv)
        if command.name == "worker":
            profile = ctx.params["profile"]
            assert profile and profile.startswith("/workers/"), service
            local = ROOT / "workers" / profile.removeprefix("/workers/")
            assert local.is_file(), f"{service}: profile {profile} is not in workers/"
            assert read_profile(str(local))["model"], f"{service}: {profile} names no model"
        if command.name == "flower":
            # Flower's options are Flower's: check them, and that this address is allowed.
            built = flower.build(ctx.params["flower_options"], environ={})
            assert built.authenticated and not flower.is_local(built.address)


@pytest.mark.parametrize("compose", sorted(COMPOSE_FILES))
def test_every_variable_is_documented_in_the_example_env(compose):
    used = {m.group(1) for m in VARIABLE.finditer((DOCKER / compose).read_text())}
    env = documented(DOCKER / COMPOSE_FILES[compose])
    assert used, compose
    assert used <= set(env), f"undocumented in {COMPOSE_FILES[compose]}: {used - set(env)}"
    assert set(env) <= used, f"documented but unused: {set(env) - used}"


def test_the_batchq_variables_the_containers_set_are_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for compose in COMPOSE_FILES:
        for service, body in batchq_services(compose):
            for name in body.get("environment", {}):
                if name.startswith("BATCHQ_"):
                    assert f"`{name}`" in readme, f"{service}: {name} not in the README"


def test_compose_is_the_system_the_readme_describes():
    spec = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = spec["services"]
    postgres, redis = services["postgres"], services["redis"]
    assert "healthcheck" in postgres and any("/var/lib/postgresql/data" in v
                                             for v in postgres["volumes"])
    command = " ".join(redis["command"])
    assert "--requirepass" in command and "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command and redis["volumes"]
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    assert any(arg.startswith("--basic-auth=") for arg in services["flower"]["command"])
    assert services["beat"]["command"][0] == "beat"
    assert any(volume.endswith(":/documents") for volume in services["beat"]["volumes"])
    api = services["api"]
    assert api["command"][0] == "serve" and api["ports"] == ["127.0.0.1:8000:8000"]
    assert any(volume.endswith(":/data") for volume in api["volumes"])  # the file store
    assert api["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}

    workers = {name: body for name, body in services.items() if body.get("command", [""])[0] == "worker"}
    assert len(workers) >= 2
    gpus, profiles = [], set()
    for name, body in workers.items():
        (device,) = body["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"], name
        gpus += device["device_ids"]
        profiles.add(body["command"][body["command"].index("--profile") + 1])
        assert body["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
    assert len(set(gpus)) == len(gpus) == len(workers), "each worker gets a GPU of its own"
    variants = {tuple(sorted(read_profile(str(ROOT / p.removeprefix("/"))).items()))
                for p in profiles}
    assert len(variants) == len(workers), "each worker is pinned to a different variant"


def test_image_runs_as_a_user_with_the_model_cache_on_a_volume():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+-runtime", dockerfile, re.M)
    user = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert user and user[-1] not in ("root", "0")
    home = re.search(r"HF_HOME=(\S+)", dockerfile).group(1)
    assert re.search(rf'^VOLUME .*"{home}"', dockerfile, re.M)
    assert re.search(r"pip install .*torch", dockerfile)
    # bitsandbytes and the rest come with the project itself.
    assert "bitsandbytes" in (ROOT / "pyproject.toml").read_text()
    assert re.search(r"^RUN pip install /src", dockerfile, re.M)
