"""Kubernetes quantities and what a pod requests of its node."""

from __future__ import annotations

from fractions import Fraction

import pytest

from k3p.quantity import QuantityError, milli_value, parse_quantity, value
from k3p_plugins.scheduler.model import DEFAULT_MEMORY_REQUEST, DEFAULT_MILLI_CPU_REQUEST, Resources, pod_requests


@pytest.mark.parametrize(("text", "expected"), [
    ("1", Fraction(1)),
    ("100m", Fraction(1, 10)),
    ("0.5", Fraction(1, 2)),
    (".5", Fraction(1, 2)),
    ("1.5Gi", Fraction(3 * 2**29)),
    ("128Mi", Fraction(128 * 2**20)),
    ("1Ki", Fraction(1024)),
    ("2k", Fraction(2000)),
    ("3M", Fraction(3_000_000)),
    ("1G", Fraction(10**9)),
    ("5n", Fraction(5, 10**9)),
    ("7u", Fraction(7, 10**6)),
    ("1e3", Fraction(1000)),
    ("1E-3", Fraction(1, 1000)),
    ("+2", Fraction(2)),
    ("-1", Fraction(-1)),
    (3, Fraction(3)),
])
def test_parse(text, expected) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "1Qi", "1 Gi", "Gi", "1.2.3", "--1", "1e", " 4", True])
def test_parse_rejects(text) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(text)


def test_values_round_up_like_kube() -> None:
    assert milli_value("100m") == 100
    assert milli_value("2") == 2000
    assert milli_value("1n") == 1  # a nano-core still needs a millicore
    assert milli_value("0.0001") == 1
    assert value("1.5") == 2
    assert value("512Mi") == 512 * 2**20
    assert value("1m") == 1


def test_resource_list() -> None:
    r = Resources.from_list({"cpu": "1500m", "memory": "1Gi", "ephemeral-storage": "2G", "pods": "110",
                             "nvidia.com/gpu": "2", "hugepages-2Mi": "4Mi", "storage": "1Gi", "bogus": "x"})
    assert (r.milli_cpu, r.memory, r.ephemeral_storage, r.pods) == (1500, 2**30, 2 * 10**9, 110)
    assert r.scalars == {"nvidia.com/gpu": 2, "hugepages-2Mi": 4 * 2**20}


def container(cpu: str | None = None, memory: str | None = None, limits: dict | None = None,
              restart: str | None = None) -> dict:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    c: dict = {"name": "c", "image": "i", "resources": {"requests": requests}}
    if limits:
        c["resources"]["limits"] = limits
    if restart:
        c["restartPolicy"] = restart
    return c


def test_containers_add_up() -> None:
    r = pod_requests({"containers": [container("100m", "64Mi"), container("250m", "1Gi")]})
    assert (r.milli_cpu, r.memory) == (350, 64 * 2**20 + 2**30)


def test_init_containers_count_as_their_peak() -> None:
    spec = {"initContainers": [container("2", "64Mi"), container("500m", "4Gi")],
            "containers": [container("1", "1Gi"), container("1", "1Gi")]}
    r = pod_requests(spec)
    # cpu: max(init 2, containers 2) = 2 cores; memory: max(init 4Gi, containers 2Gi) = 4Gi
    assert (r.milli_cpu, r.memory) == (2000, 4 * 2**30)


def test_sidecars_run_beside_everything_after_them() -> None:
    spec = {"initContainers": [container("500m", "100Mi", restart="Always"), container("1", "10Mi")],
            "containers": [container("200m", "50Mi")]}
    r = pod_requests(spec)
    # running: sidecar 500m + app 200m = 700m; init phase: sidecar 500m + init 1 = 1500m
    assert r.milli_cpu == 1500
    assert r.memory == 150 * 2**20  # running phase (100Mi + 50Mi) beats init (100Mi + 10Mi)


def test_overhead_is_added() -> None:
    r = pod_requests({"containers": [container("100m")], "overhead": {"cpu": "250m", "memory": "120Mi"}})
    assert (r.milli_cpu, r.memory) == (350, 120 * 2**20)


def test_a_limit_stands_in_for_a_missing_request() -> None:
    r = pod_requests({"containers": [container(limits={"cpu": "2", "memory": "1Gi"}),
                                     container("100m", limits={"cpu": "500m"})]})
    assert (r.milli_cpu, r.memory) == (2100, 2**30)


def test_non_zero_requests_fill_in_defaults() -> None:
    spec = {"containers": [container(), container("300m")]}
    assert pod_requests(spec).milli_cpu == 300
    r = pod_requests(spec, non_zero=True)
    assert r.milli_cpu == DEFAULT_MILLI_CPU_REQUEST + 300
    assert r.memory == 2 * DEFAULT_MEMORY_REQUEST
