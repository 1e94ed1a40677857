"""What a load run measures besides latency: CPU and memory of process trees.

A "process tree" is a process and its live descendants: the uvicorn supervisor and
its workers, or ``skiprec serve`` and everything it started. :class:`CpuProbe` is the
load generator's per-window CPU account (``cpu_percent`` in its results);
:class:`RssSampler` is the soak's resident-memory series.
"""

from __future__ import annotations

import threading
import time

import psutil

RSS_EVERY_S = 5.0


class CpuProbe:
    """CPU seconds used over the measured window, per watched process tree and by
    this generator itself; reported as percent of one core."""

    def __init__(self, watch_pids: dict[str, int]) -> None:
        self._watch = watch_pids
        self._start: dict[str, float] = {}
        self._stop: dict[str, float] = {}
        self._wall = (0.0, 0.0)

    def _sample(self) -> dict[str, float]:
        cpu = psutil.cpu_times()
        busy = cpu.user + cpu.nice + cpu.system
        busy += getattr(cpu, "irq", 0.0) + getattr(cpu, "softirq", 0.0)
        # "machine" is every process on the host: what is left after the service,
        # Redis and the generator is other tenants' load (a shared machine).
        out = {"loadgen": time.process_time(), "machine": busy}
        for name, pid in self._watch.items():
            out[name] = tree_cpu_seconds(pid)
        return out

    def start(self) -> None:
        self._start = self._sample()
        self._wall = (time.monotonic(), 0.0)

    def stop(self) -> None:
        self._stop = self._sample()
        self._wall = (self._wall[0], time.monotonic())

    def percent(self) -> dict[str, float]:
        elapsed = self._wall[1] - self._wall[0]
        if elapsed <= 0:
            return {}
        return {
            name: 100.0 * (self._stop[name] - self._start[name]) / elapsed
            for name in self._start
            if name in self._stop
        }


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (the uvicorn
    supervisor and its workers)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def worker_rss(pid: int) -> list[int]:
    """Resident bytes of each process of the tree rooted at ``pid`` that holds the
    app (the uvicorn workers; the process itself when it has no children)."""
    root = psutil.Process(pid)
    children = root.children(recursive=True)
    workers = [p for p in children if not p.children()] or [root]
    out = []
    for proc in workers:
        try:
            out.append(proc.memory_info().rss)
        except psutil.NoSuchProcess:
            continue
    return out


class RssSampler:
    """Resident memory of the service's process tree every ``RSS_EVERY_S``."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def rss(self) -> int:
        tree = [self.process, *self.process.children(recursive=True)]
        return sum(p.memory_info().rss for p in tree)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - self._start, self.rss()))
            self._stop.wait(RSS_EVERY_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.monotonic() - self._start, self.rss()))
