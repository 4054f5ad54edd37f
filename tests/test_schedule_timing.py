"""When schedules fire, with a controlled clock: cron in a time zone, DST nights, intervals,
catch-up after beat was down, and the record of every time that did not run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from batchq.errors import ConfigError
from batchq.schedule.planning import MAX_RECORDED, Policy, plan
from batchq.schedule.timing import Timing, parse_duration

BELGRADE = "Europe/Belgrade"
ANCHOR = datetime(2026, 1, 1, tzinfo=UTC)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def nightly(hour_minute: str = "0 2") -> Timing:
    return Timing(f"{hour_minute} * * *", None, BELGRADE, ANCHOR)


def test_cron_fires_at_local_time_and_stores_utc():
    t = nightly()
    slots = list(t.slots(at("2026-06-01T12:00+02:00"), at("2026-06-04T12:00+02:00")))
    assert slots == [at("2026-06-02T02:00+02:00"), at("2026-06-03T02:00+02:00"),
                     at("2026-06-04T02:00+02:00")]
    assert all(s.tzinfo == UTC for s in slots)
    assert t.describe() == "At 02:00 AM (Europe/Belgrade)"


def test_a_time_the_clocks_skip_runs_once_and_a_repeated_time_runs_once():
    t = nightly("30 2")
    spring = list(t.slots(at("2026-03-28T12:00+01:00"), at("2026-03-30T12:00+02:00")))
    # 29 March: 02:00 jumps to 03:00, so 02:30 does not exist; it runs once, at 03:00.
    assert spring == [at("2026-03-29T03:00+02:00"), at("2026-03-30T02:30+02:00")]
    autumn = list(t.slots(at("2026-10-24T12:00+02:00"), at("2026-10-26T12:00+01:00")))
    # 25 October: 02:30 happens twice (CEST, then CET); it runs once.
    assert autumn == [at("2026-10-25T02:30+02:00"), at("2026-10-26T02:30+01:00")]


def test_intervals_count_from_the_schedules_creation():
    t = Timing(None, 10, "UTC", ANCHOR)
    assert list(t.slots(ANCHOR + timedelta(seconds=15), ANCHOR + timedelta(seconds=41))) == [
        ANCHOR + timedelta(seconds=20), ANCHOR + timedelta(seconds=30),
        ANCHOR + timedelta(seconds=40)]
    assert t.describe() == "every 10s" and Timing(None, 7200, "UTC", ANCHOR).describe() == "every 2h"
    assert t.next_slots(ANCHOR, 2) == [ANCHOR + timedelta(seconds=10), ANCHOR + timedelta(seconds=20)]


@pytest.mark.parametrize("kwargs, fragment", [
    ({"cron": "61 2 * * *"}, "--cron '61 2 * * *'"),
    ({"cron": "0 2 * *"}, "five fields"),
    ({"cron": "0 2 * * *", "tz": "Mars/Olympus"}, "not an IANA time zone"),
    ({"cron": None}, "give --cron EXPRESSION or --every DURATION"),
    ({"cron": "0 2 * * *", "every_seconds": 5}, "one of them"),
])
def test_bad_timings_are_one_clear_error(kwargs, fragment):
    args = {"cron": None, "every_seconds": None, "tz": "UTC", "anchor": ANCHOR, **kwargs}
    with pytest.raises(ConfigError, match=fragment.replace("*", r"\*").replace("(", r"\(")):
        Timing(**args)


def test_durations():
    assert [parse_duration(x, "--every") for x in ("5", "5s", "15m", "36h", "7d", "2w")] == [
        5, 5, 900, 129600, 604800, 1209600]
    for bad in ("", "0s", "-5m", "soon", "5y"):
        with pytest.raises(ConfigError, match="give a duration"):
            parse_duration(bad, "--every")


def decisions(policy: Policy, after: str, now: str, timing: Timing | None = None):
    return [(d.slot, d.run, d.trigger) for d in plan(timing or nightly(), policy, at(after),
                                                    at(now))]


def test_a_time_seen_on_time_runs():
    got = decisions(Policy(), "2026-06-01T02:00+02:00", "2026-06-02T02:00:05+02:00")
    assert got == [(at("2026-06-02T02:00+02:00"), True, "on-time")]
    assert decisions(Policy(), "2026-06-02T02:00+02:00", "2026-06-02T12:00+02:00") == []


def test_after_beat_was_down_each_catch_up_policy_and_its_window():
    # Beat was down from the night of 1 June until 4 June 08:00: three nights missed.
    after, now = "2026-06-01T02:00+02:00", "2026-06-04T08:00+02:00"
    nights = [at(f"2026-06-0{d}T02:00+02:00") for d in (2, 3, 4)]
    day = 24 * 3600
    latest = decisions(Policy(catch_up="latest", catch_up_window_seconds=day), after, now)
    assert latest == [(nights[0], False, "catch-up"), (nights[1], False, "catch-up"),
                      (nights[2], True, "catch-up")]
    every = decisions(Policy(catch_up="all", catch_up_window_seconds=3 * day), after, now)
    assert [run for _, run, _ in every] == [True, True, True]
    inside = decisions(Policy(catch_up="all", catch_up_window_seconds=2 * day), after, now)
    assert [run for _, run, _ in inside] == [False, True, True]  # the oldest is past the window
    none = decisions(Policy(catch_up="none", catch_up_window_seconds=3 * day), after, now)
    assert [run for _, run, _ in none] == [False, False, False]
    reasons = [d.reason for d in plan(nightly(), Policy(catch_up="none"), at(after), at(now))]
    assert all(r and "beat was not running" in r for r in reasons)  # recorded, never silent


def test_latest_gives_way_to_a_time_that_is_on_time():
    got = decisions(Policy(catch_up="latest", catch_up_window_seconds=3 * 86400),
                    "2026-06-01T02:00+02:00", "2026-06-03T02:00:10+02:00")
    assert got == [(at("2026-06-02T02:00+02:00"), False, "catch-up"),
                   (at("2026-06-03T02:00+02:00"), True, "on-time")]


def test_a_long_outage_of_a_fast_interval_records_a_bounded_number_of_times():
    every = Timing(None, 1, "UTC", ANCHOR)
    got = plan(every, Policy(catch_up="none"), ANCHOR, ANCHOR + timedelta(hours=2))
    assert len(got) == MAX_RECORDED and not any(d.run for d in got[:-60])
    assert "earlier time(s) were missed too" in (got[0].reason or "")


def test_bad_policies_are_refused():
    with pytest.raises(ConfigError, match="--overlap 'wait'"):
        Policy(overlap="wait")
    with pytest.raises(ConfigError, match="--catch-up 'some'"):
        Policy(catch_up="some")
