"""Cron schedules of CronJobs: next times, zones, missed runs, job names."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from k3p_plugins.controller_manager.cron import ScheduleError, parse_schedule
from k3p_plugins.controller_manager.cronjob import job_from_template, job_name

UTC = dt.UTC


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def test_next_times_fields_and_macros() -> None:
    assert parse_schedule("*/15 * * * *", "UTC").next_after(at(2024, 1, 1, 0, 7)) == at(2024, 1, 1, 0, 15)
    assert parse_schedule("0 3 * * 1", "UTC").next_after(at(2024, 1, 1, 4, 0)) == at(2024, 1, 8, 3, 0)  # Mondays
    assert parse_schedule("@hourly", "UTC").next_after(at(2024, 1, 1, 0, 0)) == at(2024, 1, 1, 1, 0)
    assert parse_schedule("@daily", "UTC").next_after(at(2024, 1, 1, 0, 0)) == at(2024, 1, 2, 0, 0)
    assert parse_schedule("0 0 1 * *", "UTC").next_after(at(2024, 1, 15)) == at(2024, 2, 1)


def test_time_zone_and_dst() -> None:
    s = parse_schedule("30 2 * * *", "America/New_York")
    first = s.next_after(at(2024, 1, 1))
    assert first.astimezone(ZoneInfo("America/New_York")).hour == 2
    assert first.astimezone(UTC) == at(2024, 1, 1, 7, 30)
    prefixed = parse_schedule("CRON_TZ=Asia/Tokyo 0 9 * * *")
    # 09:00 in Tokyo is midnight UTC; "after" is strict, so the next one is a day later
    assert prefixed.next_after(at(2024, 1, 1)).astimezone(UTC) == at(2024, 1, 2, 0, 0)


def test_most_recent_and_missed() -> None:
    s = parse_schedule("*/5 * * * *", "UTC")
    assert s.most_recent(at(2024, 1, 1, 0, 0), at(2024, 1, 1, 0, 4)) == (None, 0)
    assert s.most_recent(at(2024, 1, 1, 0, 0), at(2024, 1, 1, 0, 12)) == (at(2024, 1, 1, 0, 10), 2)
    latest, missed = s.most_recent(at(2023, 1, 1), at(2024, 1, 1, 0, 12))
    assert latest == at(2024, 1, 1, 0, 10) and missed > 100


@pytest.mark.parametrize("bad", ["* * *", "61 * * * *", "* * * * * *", "@every 5m", "nonsense"])
def test_invalid_schedules(bad: str) -> None:
    with pytest.raises(ScheduleError):
        parse_schedule(bad, "UTC")


def test_unknown_zone() -> None:
    with pytest.raises(ScheduleError):
        parse_schedule("* * * * *", "Mars/Olympus")


def test_job_name_and_template() -> None:
    when = at(2024, 1, 1, 0, 10)
    assert job_name("backup", when) == f"backup-{int(when.timestamp()) // 60}"
    cj = {"apiVersion": "batch/v1", "kind": "CronJob",
          "metadata": {"name": "backup", "namespace": "ns", "uid": "u1"},
          "spec": {"jobTemplate": {"metadata": {"labels": {"a": "b"}},
                                   "spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}}}}
    job = job_from_template(cj, when, UTC)
    assert job["metadata"]["name"] == job_name("backup", when)
    assert job["metadata"]["labels"] == {"a": "b"}
    assert job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"] == "2024-01-01T00:10:00Z"
    ref = job["metadata"]["ownerReferences"][0]
    assert ref["kind"] == "CronJob" and ref["uid"] == "u1" and ref["controller"]


class FakeClient:
    def __init__(self) -> None:
        self.created: list[dict] = []
        self.deleted: list[str] = []

    async def create(self, _res: object, obj: dict, _ns: str | None = None) -> dict:
        made = {**obj, "metadata": {**obj["metadata"], "uid": f"uid-{len(self.created)}"}}
        self.created.append(made)
        return made

    async def get(self, *_a: object, **_k: object) -> dict:
        from k3p.client import ApiError

        raise ApiError(404, {"reason": "NotFound"})

    async def delete(self, _res: object, name: str, *_a: object, **_k: object) -> None:
        self.deleted.append(name)


class Jobs:
    def __init__(self, items: list[dict]) -> None:
        self._items = items

    def items(self, _ns: str | None = None) -> list[dict]:
        return self._items


def cronjob(**spec: object) -> dict:
    return {"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "cj", "namespace": "ns", "uid": "cj-uid", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"schedule": "*/5 * * * *", "timeZone": "UTC", "concurrencyPolicy": "Allow",
                     "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}}, **spec}}


async def test_cronjob_sync_creates_due_job_and_honours_policies() -> None:
    from k3p_plugins.controller_manager.cronjob import CronJobController

    client = FakeClient()
    ctl = CronJobController(client, None)  # type: ignore[arg-type]
    now = at(2024, 1, 1, 0, 12, 30)
    status: dict = {}
    wait = await ctl._sync(cronjob(), status, [], now)
    assert [j["metadata"]["name"] for j in client.created] == [job_name("cj", at(2024, 1, 1, 0, 10))]
    assert status["lastScheduleTime"] == "2024-01-01T00:10:00Z" and len(status["active"]) == 1
    assert wait == pytest.approx(150.1)
    running = {"metadata": {"name": client.created[0]["metadata"]["name"], "uid": "uid-0", "namespace": "ns",
                            "ownerReferences": [{"uid": "cj-uid", "controller": True}]}, "status": {}}
    # the same time again: nothing new
    await ctl._sync(cronjob(), status, [running], now)
    assert len(client.created) == 1
    # Forbid with a running job: the next time is skipped
    later = at(2024, 1, 1, 0, 16)
    await ctl._sync(cronjob(concurrencyPolicy="Forbid"), status, [running], later)
    assert len(client.created) == 1
    # Replace: the running job is deleted and a new one started
    await ctl._sync(cronjob(concurrencyPolicy="Replace"), status, [running], later)
    assert client.deleted == [running["metadata"]["name"]] and len(client.created) == 2
    assert [a["uid"] for a in status["active"]] == ["uid-1"]
    # a job that vanished is dropped from the active list
    await ctl._sync(cronjob(), status, [], later)
    assert status["active"] == []


async def test_cronjob_missed_deadline_and_suspend() -> None:
    from k3p_plugins.controller_manager.cronjob import CronJobController

    client = FakeClient()
    ctl = CronJobController(client, None)  # type: ignore[arg-type]
    status: dict = {}
    await ctl._sync(cronjob(startingDeadlineSeconds=10), status, [], at(2024, 1, 1, 0, 12, 30))
    assert client.created == [] and "lastScheduleTime" not in status
    await ctl._sync(cronjob(suspend=True), status, [], at(2024, 1, 1, 0, 12, 30))
    assert client.created == []
    await ctl._sync(cronjob(schedule="bad"), status, [], at(2024, 1, 1, 0, 12, 30))
    assert client.created == []
