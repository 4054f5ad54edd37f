"""What a beat tick does with a schedule's due times: run them on time, catch up on missed ones
by the schedule's policy, and record every time it will not run (and why). Pure: the clock
is passed in, so outages, windows and DST nights are tested exactly."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from batchq.errors import ConfigError
from batchq.schedule.timing import Timing
from batchq.states import RunTrigger

OVERLAP = ("skip", "queue")  # when the previous run's job is still running at a new time
CATCH_UP = ("none", "latest", "all")  # what to do with times beat was not there for
GRACE_SECONDS = 60  # a time seen within this long of it is on time (beat ticks every few s)
MAX_RECORDED = 100  # missed times recorded one by one; older ones are counted in a note


@dataclass(frozen=True)
class Policy:
    overlap: str = "skip"
    catch_up: str = "latest"
    catch_up_window_seconds: int = 6 * 3600

    def __post_init__(self) -> None:
        if self.overlap not in OVERLAP:
            raise ConfigError(f"--overlap {self.overlap!r}: use {' or '.join(OVERLAP)}")
        if self.catch_up not in CATCH_UP:
            raise ConfigError(f"--catch-up {self.catch_up!r}: use {', '.join(CATCH_UP)}")


@dataclass(frozen=True)
class Decision:
    slot: datetime  # the scheduled time (UTC)
    run: bool  # False: recorded as missed, with the reason
    trigger: RunTrigger
    reason: str | None = None


def plan(timing: Timing, policy: Policy, after: datetime, now: datetime) -> list[Decision]:
    """Decisions for every scheduled time in (after, now], oldest first. `after` is the last
    time already decided (or the schedule's creation)."""
    due = list(timing.slots(after, now))
    # Only the newest time can be on time: an older one has a later one after it already.
    on_time = due[-1:] if due and (now - due[-1]).total_seconds() <= GRACE_SECONDS else []
    late = due[:len(due) - len(on_time)]
    window = policy.catch_up_window_seconds
    recent = [t for t in late if (now - t).total_seconds() <= window]
    catch = set()
    if policy.catch_up == "all":
        catch = set(recent)
    elif policy.catch_up == "latest" and recent and not on_time:
        catch = {recent[-1]}  # a run on time now would take the same documents anyway
    decisions = []
    for t in late:
        if t in catch:
            decisions.append(Decision(t, True, RunTrigger.CATCH_UP))
        elif t in recent:
            why = ("a later time runs instead" if policy.catch_up == "latest"
                   else "catch-up is none")
            decisions.append(Decision(t, False, RunTrigger.CATCH_UP,
                                      f"beat was not running; {why}"))
        else:
            decisions.append(Decision(t, False, RunTrigger.CATCH_UP,
                                      f"beat was not running, and this is past the catch-up "
                                      f"window ({window}s)"))
    decisions += [Decision(t, True, RunTrigger.ON_TIME) for t in on_time]
    if len(decisions) > MAX_RECORDED:
        dropped = len(decisions) - MAX_RECORDED
        decisions = decisions[dropped:]
        first = decisions[0]
        decisions[0] = Decision(first.slot, first.run, first.trigger,
                                f"{first.reason or 'missed'}; {dropped} earlier time(s) were "
                                "missed too and are not listed")
    return decisions
