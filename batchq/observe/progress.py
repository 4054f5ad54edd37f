"""Progress bars for the terminal: `batchq status --watch` and `submit --wait` draw the same one.

Pure text from a job's view (batchq.store.views.JobView), so they are tested as strings; the
CLI decides whether to redraw in place (a terminal) or print each change as a line (a log).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import IO, Any

from batchq.store.database import utcnow
from batchq.store.views import JobView

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


def eta_seconds(job: JobView, now: datetime | None = None) -> float | None:
    """Time left at the pace of the run so far (finished lines per second since it started)."""
    done, started = job.counts.done, job.metrics.started_at
    left = job.counts.total - done
    if job.status.final or started is None or done == 0 or left <= 0:
        return None
    elapsed = ((now or utcnow()) - started).total_seconds()
    return left * elapsed / done if elapsed > 0 else None


def bar(job: JobView, now: datetime | None = None, width: int = BAR_WIDTH) -> str:
    """One line: `a1b2c3d4e5f6 running [#######.........] 1200/3000 40% 3 failed 512 tok/s
    ETA 1m40s qwen2.5-7b-instruct/nf4`."""
    c, m = job.counts, job.metrics
    total = max(c.total, 1)
    filled = round(width * c.done / total)
    parts = [f"{job.id[:12]} {job.status:<9}",
             "[" + "#" * filled + "." * (width - filled) + "]",
             f"{c.done}/{c.total} {100 * c.done // total:>3}%",
             f"{c.failed} failed"]
    if m.tokens_per_second:
        parts.append(f"{m.tokens_per_second:.0f} tok/s")
    eta = eta_seconds(job, now)
    if eta is not None:
        parts.append(f"ETA {_duration(eta)}")
    elif job.status.final and m.run_seconds:
        parts.append(f"took {_duration(m.run_seconds)}")
    parts.append(job.variant if len(job.variants) <= 1
                 else " + ".join(share.variant for share in job.variants))
    if job.name:
        parts.append(f"({job.name})")
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


def job_progress(out: IO[str]) -> Callable[[JobView], None]:
    """What `submit --wait`, `run` and `retry --wait` pass to service.wait: one job's bar."""
    screen = Screen(out)
    return lambda job: screen.show([bar(job)], key=change_key([job]))


def change_key(jobs: Sequence[JobView]) -> tuple[Any, ...]:
    """What counts as a change for a log: status and counts, not the ticking ETA."""
    return tuple((job.id, job.status, job.counts) for job in jobs)
