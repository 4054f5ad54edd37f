"""When a schedule fires: a cron expression in an IANA time zone (cronsim: DST as Debian's cron
does it, so a time the clocks skip or repeat runs once) or a fixed interval. Pure: the clock
is always passed in, so every night of the year can be tested."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from batchq.errors import ConfigError

_DURATION = re.compile(r"^\s*([0-9]+)\s*(s|m|h|d|w)?\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(text: str, what: str) -> int:
    """Seconds from `90`, `90s`, `15m`, `36h`, `7d` or `2w`."""
    match = _DURATION.match(text)
    if not match or int(match.group(1)) <= 0:
        raise ConfigError(f"{what} {text!r}: give a duration such as 30s, 15m, 36h or 7d")
    return int(match.group(1)) * _UNIT[match.group(2)]


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"--tz {name!r}: not an IANA time zone (e.g. Europe/Belgrade, "
                          "America/New_York, UTC)") from None


@dataclass(frozen=True)
class Timing:
    cron: str | None
    every_seconds: int | None
    tz: str
    anchor: datetime  # interval slots count from here (the schedule's creation)

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every_seconds is None):
            raise ConfigError("give --cron EXPRESSION or --every DURATION (one of them)")
        zone(self.tz)
        if self.cron is not None:
            from cronsim import CronSim, CronSimError

            try:
                CronSim(self.cron, self.anchor.astimezone(zone(self.tz)))
            except CronSimError as exc:
                raise ConfigError(f"--cron {self.cron!r}: {exc} (five fields: minute hour "
                                  "day-of-month month day-of-week, e.g. '0 2 * * *')") from None

    def slots(self, after: datetime, until: datetime) -> Iterator[datetime]:
        """Scheduled times t with after < t <= until, in UTC, oldest first."""
        if self.every_seconds is not None:
            step = timedelta(seconds=self.every_seconds)
            n = max(0, (after - self.anchor) // step + 1)
            t = self.anchor + n * step
            while t <= until:
                if t > after:
                    yield t
                t += step
            return
        from cronsim import CronSim

        assert self.cron is not None
        for local in CronSim(self.cron, after.astimezone(zone(self.tz))):
            t = local.astimezone(UTC)
            if t > until:
                return
            if t > after:
                yield t

    def next_slots(self, now: datetime, n: int) -> list[datetime]:
        found = []
        horizon = now + timedelta(days=3660)
        for t in self.slots(now, horizon):
            found.append(t)
            if len(found) == n:
                break
        return found

    def describe(self) -> str:
        """In words, for `schedule list`: "At 02:00 AM (Europe/Belgrade)", "every 30s"."""
        if self.every_seconds is not None:
            return f"every {_words(self.every_seconds)}"
        from cron_descriptor import get_description

        assert self.cron is not None
        try:
            text = str(get_description(self.cron))
        except Exception:  # a description is for people; the expression itself is valid
            text = self.cron
        return f"{text} ({self.tz})"


def _words(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
