"""Footprint benchmark: the idle memory of the smallest k3p server beside the full bundle's, in one run.

    python bench/footprint.py [--settle S] [--samples N] [--cache DIR] [--rebuild]

Three ``k3p server --disable-agent`` processes, each on a free loopback port with its own
temporary data dir, run side by side:

1. *minimal*: the core and the sqlite datastore alone, ``pip install . plugins/datastore_sql``
   into a venv from a clean clone of this repository's HEAD (what is committed). The venv is
   built on the first run (PyPI; about half a minute) and kept under ``--cache`` (a temp
   folder) for the next runs of the same commit; ``--rebuild`` builds it again.
2. *full bundle*: the interpreter running this benchmark, with every plugin it has installed
   (``./install.sh``: the bundle).
3. *full, disabled*: the same install with ``--disable`` naming every plugin but
   ``datastore_sql``: what switching plugins off at run time saves, against not installing them.

Each is started alone (time to /readyz), then all idle together for ``--settle`` seconds; RSS
(VmRSS), PSS and peak RSS (VmHWM) of each server process are then sampled ``--samples``
times a second apart (the median is printed) and its CPU over that window. Without an agent
no server has child processes (a child's memory would be listed separately). Needs no root.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import Progress, banner, mib, peak_rss_bytes, process_cpu_seconds, pss_bytes

from k3p.testing import K3pServer, descendants
from k3p.testing.memory import rss_bytes

ROOT = Path(__file__).resolve().parent.parent
MINIMAL = (".", "plugins/datastore_sql")
progress = Progress()


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would make another interpreter see this one's packages.

    PYTHONSAFEPATH: ``python -m k3p`` would otherwise put the working directory first on
    sys.path, where a checkout's stray ``k3p.egg-info`` would announce another install's plugins.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("K3P_") and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "PYTHONNOUSERSITE": "1", "PYTHONSAFEPATH": "1", **extra}


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def versions(python: str) -> dict[str, str]:
    """Distribution name -> version of everything ``python`` has installed."""
    code = ("import importlib.metadata as m, json\n"
            "print(json.dumps({d.metadata['Name'].lower().replace('_', '-'): d.version for d in m.distributions()}))")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, env=clean_env(), check=True).stdout
    return json.loads(out)


def pins() -> str:
    """Constraints holding the minimal venv's dependencies to this interpreter's versions: the two installs
    then differ by their plugins, not by what PyPI has released since the full bundle was installed."""
    skip = ("k3p", "pip", "setuptools", "wheel")
    return "".join(f"{name}=={version}\n" for name, version in sorted(versions(sys.executable).items())
                   if not name.startswith(skip))


def minimal_venv(cache: Path, rebuild: bool) -> tuple[Path, str]:
    """The venv of the minimal install for HEAD (built or reused) and a sentence saying how it was made."""
    commit = git("rev-parse", "HEAD")
    constraints = pins()
    digest = hashlib.sha256(constraints.encode()).hexdigest()[:8]
    key = f"{commit[:12]}-py{sys.version_info.major}.{sys.version_info.minor}-{digest}"
    folder = cache / key
    venv = folder / "venv"
    marker = folder / "built.json"
    how = (f"pip install {' '.join(MINIMAL)} into a fresh venv from a clean clone of {commit[:12]} (HEAD), "
           f"dependencies held to this interpreter's versions")
    if marker.exists() and not rebuild:
        built = json.loads(marker.read_text())
        return venv, f"{how}, built {built['when']} in {built['seconds']:.0f} s, reused from {venv}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    progress(f"building the minimal venv in {folder} (PyPI)")
    began = time.perf_counter()

    def run(*cmd: str, cwd: Path | None = None) -> None:
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=clean_env())
        if result.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")

    run("git", "clone", "--quiet", str(ROOT), str(folder / "src"))
    run(sys.executable, "-m", "venv", str(venv))
    quiet = ("--quiet", "--disable-pip-version-check")
    run(str(venv / "bin" / "python"), "-m", "pip", "install", *quiet, "setuptools>=68", "wheel")
    (folder / "constraints.txt").write_text(constraints)
    run(str(venv / "bin" / "python"), "-m", "pip", "install", *quiet, "--no-build-isolation",
        "--constraint", str(folder / "constraints.txt"), *MINIMAL, cwd=folder / "src")
    seconds = time.perf_counter() - began
    when = datetime.datetime.now().isoformat(timespec="seconds")
    marker.write_text(json.dumps({"commit": commit, "when": when, "seconds": seconds}))
    return venv, f"{how}, built now in {seconds:.0f} s, kept in {venv} for the next runs"


def installed_plugins(python: str) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="k3pf-") as tmp:
        (Path(tmp) / "config.yaml").touch()
        out = subprocess.run([python, "-m", "k3p", "plugins", "list", "-o", "json", "--config", f"{tmp}/config.yaml",
                              "--data-dir", f"{tmp}/data"], capture_output=True, text=True, env=clean_env(),
                             check=True).stdout
    return [p["name"] for p in json.loads(out)]


@dataclass
class Subject:
    label: str
    python: str
    plugins: list[str]
    installed: int
    args: list[str] = field(default_factory=list)
    server: K3pServer | None = None
    ready_in: float = 0.0
    rss: list[int] = field(default_factory=list)
    pss: list[int] = field(default_factory=list)
    peak: int | None = None
    cpu: float = 0.0
    children: int = 0

    @property
    def pid(self) -> int:
        assert self.server is not None and self.server.proc is not None
        return self.server.proc.pid

    @property
    def median_rss(self) -> float:
        return statistics.median(self.rss) if self.rss else float("nan")


def measure(subjects: list[Subject], samples: int) -> None:
    cpu_before = {s.label: process_cpu_seconds(s.pid) for s in subjects}
    began = time.perf_counter()
    for i in range(samples):
        if i:
            time.sleep(1.0)
        for s in subjects:
            s.rss.append(rss_bytes(s.pid) or 0)
            s.pss.append(pss_bytes(s.pid) or 0)
    wall = time.perf_counter() - began
    for s in subjects:
        s.peak = peak_rss_bytes(s.pid)
        s.cpu = (process_cpu_seconds(s.pid) - cpu_before[s.label]) / max(wall, 1e-9)
        s.children = len(descendants(s.pid))


def run(args: argparse.Namespace) -> int:
    venv, how = minimal_venv(Path(args.cache), args.rebuild)
    minimal_python = str(venv / "bin" / "python")
    full_plugins = installed_plugins(sys.executable)
    minimal_plugins = installed_plugins(minimal_python)
    import k3p

    subjects = [
        Subject("minimal (core + datastore_sql)", minimal_python, minimal_plugins, len(minimal_plugins)),
        Subject("full bundle", sys.executable, full_plugins, len(full_plugins)),
    ]
    others = [p for p in full_plugins if p != "datastore_sql"]
    if others:
        subjects.append(Subject("full, --disable all but datastore_sql", sys.executable, ["datastore_sql"],
                                len(full_plugins), ["--disable", ",".join(others)]))
    print(f"minimal: {how}")
    print(f"  its plugins: {', '.join(minimal_plugins)}")
    mine, full_versions = versions(minimal_python), versions(sys.executable)
    differ = sorted(f"{n} {v} (full: {full_versions[n]})" for n, v in mine.items()
                    if n in full_versions and v != full_versions[n] and not n.startswith("k3p")
                    and n not in ("pip", "setuptools", "wheel"))
    missing = sorted(n for n in mine if n not in full_versions)
    print(f"  its {len(mine)} distributions: " + (f"versions differing from the full install's: {', '.join(differ)}"
                                                   if differ else "the same versions as the full install's")
          + (f"; not in the full install: {', '.join(missing)}" if missing else ""))
    print(f"full bundle: this interpreter's install ({sys.executable}, k3p from {Path(k3p.__file__).parent})")
    print(f"  its plugins: {', '.join(full_plugins)}")
    if git("status", "--porcelain", "--untracked-files=no"):
        print("  note: the checkout has uncommitted changes; an editable full install runs them, the minimal "
              "venv runs HEAD")
    workdir = Path(tempfile.mkdtemp(prefix="k3pf-"))
    try:
        for i, s in enumerate(subjects):
            progress(f"starting {s.label}")
            s.server = K3pServer(workdir / f"s{i}", args=["--disable-agent", *s.args], python=s.python,
                                 env={"PYTHONPATH": "", "PYTHONNOUSERSITE": "1", "PYTHONSAFEPATH": "1"})
            began = time.perf_counter()
            s.server.start(timeout=120)
            s.ready_in = time.perf_counter() - began
        progress(f"all ready: idle {args.settle:.0f} s, then {args.samples} samples a second apart")
        time.sleep(args.settle)
        measure(subjects, args.samples)
    except BaseException:
        for s in subjects:
            if s.server is not None:
                print(f"--- {s.label}: k3p log (tail) ---\n{s.server.logs()[-2000:]}", file=sys.stderr)
        raise
    finally:
        for s in subjects:
            if s.server is not None:
                s.server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(f"idle k3p server --disable-agent, settled {args.settle:.0f} s; RSS and PSS: median of {args.samples} "
          f"samples 1 s apart; CPU: share of one core over them")
    print(f"  {'install':<40}{'plugins on/installed':>21}{'ready in':>10}{'RSS MiB':>9}{'PSS MiB':>9}{'peak MiB':>10}"
          f"{'CPU':>7}")
    for s in subjects:
        counts = f"{len(s.plugins)}/{s.installed}"
        print(f"  {s.label:<40}{counts:>21}{s.ready_in:>9.2f}s{mib(s.median_rss):>9}"
              f"{mib(statistics.median(s.pss)):>9}{mib(s.peak):>10}{s.cpu:>7.3f}"
              + (f"  ({s.children} child processes not counted)" if s.children else ""))
    small, full = subjects[0], subjects[1]
    print()
    print(f"  minimal/full idle RSS: {small.median_rss / full.median_rss:.2f}x "
          f"({mib(full.median_rss - small.median_rss)} MiB less; the full bundle uses "
          f"{full.median_rss / small.median_rss:.2f}x the minimal's)")
    if len(subjects) > 2:
        off = subjects[2]
        print(f"  full with all but datastore_sql disabled: {mib(off.median_rss)} MiB, "
              f"{off.median_rss / full.median_rss:.2f}x the full bundle's, {off.median_rss / small.median_rss:.2f}x "
              f"the minimal's")
        print("  (k3p server still imports a disabled plugin, never registering it, so that its node-cleanup hook "
              "runs: only an uninstalled plugin costs nothing)")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settle", type=float, default=10.0, help="seconds all servers idle before sampling")
    parser.add_argument("--samples", type=int, default=5, help="memory samples, a second apart")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "k3p-bench-footprint"),
                        help="where the minimal venv is kept between runs")
    parser.add_argument("--rebuild", action="store_true", help="build the minimal venv again")
    args = parser.parse_args()
    print(banner("k3p footprint benchmark"))
    sys.exit(run(args))


if __name__ == "__main__":
    main()
