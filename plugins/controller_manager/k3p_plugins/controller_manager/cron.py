"""Cron schedules as CronJobs use them: five fields or a ``@daily``-style macro, in a time zone.

Parsing and iteration come from ``croniter``; what is here is the CronJob semantics around
it: ``TZ=``/``CRON_TZ=`` prefixes, the controller's local zone when none is given, and the
"most recent missed time" that decides whether a Job is due.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterError

#: more missed start times than this produce a TooManyMissedTimes warning (kube's limit)
MAX_MISSED = 100


class ScheduleError(ValueError):
    pass


def local_zone() -> dt.tzinfo:
    """The zone of this process (kube's controller uses time.Local when a CronJob names none)."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f)
    except (OSError, ValueError):
        return dt.UTC


def zone(name: str | None) -> dt.tzinfo:
    """The IANA zone ``name`` (ScheduleError if unknown), or the local zone for None."""
    if not name:
        return local_zone()
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ScheduleError(f"unknown time zone {name}") from e


@dataclass(frozen=True)
class Schedule:
    expression: str
    tz: dt.tzinfo

    def next_after(self, when: dt.datetime) -> dt.datetime:
        """The first scheduled time strictly after ``when``."""
        return croniter(self.expression, when.astimezone(self.tz)).get_next(dt.datetime)

    def most_recent(self, earliest: dt.datetime, now: dt.datetime) -> tuple[dt.datetime | None, int]:
        """The latest scheduled time in (earliest, now] and how many such times there were (capped)."""
        first = self.next_after(earliest)
        if first > now:
            return None, 0
        it = croniter(self.expression, first.astimezone(self.tz))
        count, latest = 1, first
        while count <= MAX_MISSED:
            t = it.get_next(dt.datetime)
            if t > now:
                return latest, count
            latest, count = t, count + 1
        # Many missed times: jump to the last one directly instead of walking them all.
        last = croniter(self.expression, (now + dt.timedelta(microseconds=1)).astimezone(self.tz)).get_prev(
            dt.datetime)
        return last, count


def parse_schedule(schedule: str, time_zone: str | None = None) -> Schedule:
    """A CronJob's ``spec.schedule`` (+ ``spec.timeZone``) as a :class:`Schedule`; ScheduleError if invalid."""
    text = schedule.strip()
    tz_name = time_zone
    for prefix in ("CRON_TZ=", "TZ="):
        if text.startswith(prefix):
            head, _, rest = text.partition(" ")
            tz_name = head[len(prefix):]
            text = rest.strip()
            break
    tz = zone(tz_name)
    fields = text.split()
    if not text.startswith("@") and len(fields) != 5:
        raise ScheduleError(f"expected exactly 5 fields, found {len(fields)}: {text}")
    if text.startswith("@every"):
        raise ScheduleError(f"unsupported descriptor: {text}")
    try:
        croniter(text, dt.datetime.now(tz))
    except (CroniterError, ValueError, KeyError) as e:
        raise ScheduleError(str(e) or f"invalid schedule {text}") from None
    return Schedule(text, tz)
