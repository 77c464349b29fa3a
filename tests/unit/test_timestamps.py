"""The one way k3p writes Kubernetes timestamps: metav1.Time and metav1.MicroTime (k3p.client.objects)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone

from k3p.client.objects import format_micro_time, format_time, format_unix_time, parse_time

MOMENT = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def test_time_is_utc_seconds_with_the_fraction_dropped() -> None:
    assert format_time(MOMENT) == "2025-01-02T03:04:05Z"
    assert format_time(MOMENT.astimezone(timezone(timedelta(hours=2)))) == "2025-01-02T03:04:05Z"


def test_micro_time_keeps_six_digits() -> None:
    assert format_micro_time(MOMENT) == "2025-01-02T03:04:05.678901Z"
    assert format_micro_time(MOMENT.replace(microsecond=0)) == "2025-01-02T03:04:05.000000Z"


def test_unix_time_is_truncated_not_rounded() -> None:
    assert format_unix_time(MOMENT.timestamp()) == "2025-01-02T03:04:05Z"
    assert format_unix_time(int(MOMENT.timestamp())) == "2025-01-02T03:04:05Z"


def test_without_an_argument_they_write_now() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    written = parse_time(format_time()), parse_time(format_micro_time())
    assert all(w is not None and before <= w <= datetime.now(UTC) for w in written)


def test_parse_reads_what_format_writes() -> None:
    assert parse_time(format_micro_time(MOMENT)) == MOMENT
    assert parse_time(format_time(MOMENT)) == MOMENT.replace(microsecond=0)


def test_importing_the_helpers_stays_light() -> None:
    """The API server and the agent import these helpers: they must not pull in the HTTP client."""
    code = ("import sys, k3p.client.objects; "
            "print(sorted(m for m in ('httpx', 'yaml', 'k3p.client.api', 'k3p.client.informer') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
