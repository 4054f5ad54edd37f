"""The HTTP API's commands: `batchq serve` and `batchq keys`."""

from __future__ import annotations

import click

from batchq import service
from batchq.cli.base import cli
from batchq.config import get_settings
from batchq.store.views import iso


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Listen here; any address but loopback needs an API key to exist.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="API processes (they share the database and the file store).")
def serve(host: str, port: int, workers: int) -> None:
    """The HTTP API: OpenAI's Files and Batches API at http://HOST:PORT/v1.

    Point the `openai` client at it (base_url="http://HOST:PORT/v1", api_key=a key from
    `batchq keys create`). It stores and queues; workers generate.
    """
    from batchq.api.server import serve as run

    run(get_settings(), host, port, workers, lambda line: click.echo(line, err=True))


@cli.group()
def keys() -> None:
    """API keys of `batchq serve`: each key is a tenant with its own files and batches."""


@keys.command("create")
@click.argument("name")
@click.option("--max-active-batches", type=click.IntRange(1), default=None,
              help="Batches that may run at once (default: no limit).")
@click.option("--max-pending-lines", type=click.IntRange(1), default=None,
              help="Lines that may wait or run at once, over all batches (default: no limit).")
@click.option("--requests-per-minute", type=click.IntRange(1), default=None,
              help="HTTP requests per minute (default: no limit).")
def keys_create(name: str, max_active_batches: int | None, max_pending_lines: int | None,
                requests_per_minute: int | None) -> None:
    """Create a key for tenant NAME and print its secret, once: it is stored only as a digest."""
    new = service.create_key(name, max_active_batches=max_active_batches,
                             max_pending_lines=max_pending_lines,
                             requests_per_minute=requests_per_minute)
    click.echo(new.secret)
    click.echo(f"key {name!r} created; this is the only time its secret is shown", err=True)


@keys.command("list")
def keys_list() -> None:
    """The keys, their limits and whether they are revoked (never their secrets)."""
    found = service.list_keys()
    if not found:
        click.echo("no keys yet (`batchq keys create NAME`)", err=True)
        return
    click.echo(f"{'NAME':<24}  {'ID':<12}  {'ACTIVE':>6}  {'PENDING':>9}  {'REQ/MIN':>7}  "
               f"{'CREATED':<25}  REVOKED")

    def limit(value: int | None) -> str:
        return "-" if value is None else str(value)

    for key in found:
        click.echo(f"{key.name:<24}  {key.key_id:<12}  {limit(key.max_active_batches):>6}  "
                   f"{limit(key.max_pending_lines):>9}  {limit(key.requests_per_minute):>7}  "
                   f"{iso(key.created_at) or '-':<25}  {iso(key.revoked_at) or '-'}")


@keys.command("revoke")
@click.argument("name")
def keys_revoke(name: str) -> None:
    """Revoke NAME's key: requests with it are refused (401) from now on."""
    service.revoke_key(name)
    click.echo(f"key {name!r} revoked", err=True)
