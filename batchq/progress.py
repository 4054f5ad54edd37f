"""Progress bars for the terminal: `batchq status --watch` and `submit --wait` draw the same one.

Pure text from a job description (batchq.jobs.status), so they are tested as strings; the
CLI decides whether to redraw in place (a terminal) or print each change as a line (a log).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import IO, Any

from batchq.db import utcnow
from batchq.jobs import FINAL_JOB_STATUSES
from batchq.variants import variant_name

BAR_WIDTH = 24


def percent(fraction: float | None) -> str:
    """`61.3%` from 0.613, `-` when there is nothing to measure yet."""
    return "-" if fraction is None else f"{fraction * 100:.1f}%"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta_seconds(info: dict[str, Any], now: datetime | None = None) -> float | None:
    """Time left at the pace of the run so far (finished lines per second since it started)."""
    c, started = info["counts"], info["metrics"]["started_at"]
    done = c["completed"] + c["failed"] + c["cancelled"]
    left = c["total"] - done
    if info["status"] in FINAL_JOB_STATUSES or not started or done == 0 or left <= 0:
        return None
    elapsed = ((now or utcnow()) - datetime.fromisoformat(started)).total_seconds()
    return left * elapsed / done if elapsed > 0 else None


def bar(info: dict[str, Any], now: datetime | None = None, width: int = BAR_WIDTH) -> str:
    """One line: `a1b2c3d4e5f6 running [#######.........] 1200/3000 40% 3 failed 512 tok/s
    ETA 1m40s qwen2.5-7b-instruct/nf4`."""
    c, m = info["counts"], info["metrics"]
    done = c["completed"] + c["failed"] + c["cancelled"]
    total = max(c["total"], 1)
    filled = round(width * done / total)
    parts = [f"{info['id'][:12]} {info['status']:<9}",
             "[" + "#" * filled + "." * (width - filled) + "]",
             f"{done}/{c['total']} {100 * done // total:>3}%",
             f"{c['failed']} failed"]
    if m["tokens_per_second"]:
        parts.append(f"{m['tokens_per_second']:.0f} tok/s")
    eta = eta_seconds(info, now)
    if eta is not None:
        parts.append(f"ETA {_duration(eta)}")
    elif info["status"] in FINAL_JOB_STATUSES and m["run_seconds"]:
        parts.append(f"took {_duration(m['run_seconds'])}")
    parts.append(variant_name(info["queue"]))
    if info.get("name"):
        parts.append(f"({info['name']})")
    return "  ".join(parts)


class Screen:
    """Shows a block of lines: redrawn in place on a terminal, printed when it changes
    otherwise (so a log or a pipe gets each state once, not a stream of escapes)."""

    def __init__(self, out: IO[str], tty: bool | None = None):
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.drawn = 0
        self.last: Any = None

    def show(self, lines: list[str], key: Any = None) -> None:
        """`key` says what counts as a change for a log: by default the text, but an ETA
        that ticks down should not print a line a second."""
        seen = lines if (self.tty or key is None) else key
        if seen == self.last:
            return
        if self.tty:
            # Up over the last block, then rewrite each line and clear what a longer one left.
            text = "\033[F" * self.drawn + "".join(f"\r\033[K{line}\n" for line in lines)
            text += "\033[J"
        else:
            text = "".join(f"{line}\n" for line in lines)
        self.out.write(text)
        self.out.flush()
        self.drawn = len(lines)
        self.last = seen


def job_progress(out: IO[str]) -> Callable[[dict[str, Any]], None]:
    """What `submit --wait`, `run` and `retry --wait` pass to jobs.wait: one job's bar."""
    screen = Screen(out)
    return lambda info: screen.show([bar(info)], key=change_key([info]))


def change_key(infos: list[dict[str, Any]]) -> tuple:
    return tuple((i["id"], i["status"], tuple(i["counts"].values())) for i in infos)
