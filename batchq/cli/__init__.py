"""`batchq`: a thin click shell over batchq.service. Errors become one line and a documented
exit code (batchq.cli.base).

  base      the group, error handling, logging, shared options
  jobs      submit, run, status, results, report, cancel, retry
  show      how a job is printed: status, lists, live bars
  serve     worker, flower, metrics (the long-running processes)
  admin     models, db, make-tiny-model, bench
  api       serve (the HTTP API) and keys
  schedules schedule add|list|show|pause|resume|remove|run-now|preview, beat
"""

from batchq.cli import admin, api, jobs, schedules, serve  # noqa: F401  (each registers its commands)
from batchq.cli.base import cli


def main() -> None:
    cli(prog_name="batchq")


__all__ = ["cli", "main"]
