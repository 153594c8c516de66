"""Resident memory and CPU time of a process tree (the `bentoml serve` supervisor and its workers), sampled."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

SAMPLE_SECONDS = 0.05


@dataclass(frozen=True)
class Sample:
    at: float
    """`time.time()`, comparable across processes (the load generator reports its window in it)."""
    rss: int
    """Bytes resident, summed over the tree: shared pages count once per process, so this errs high."""
    cpu: float
    """CPU seconds (user + system) the tree has used so far, including processes that already ended."""


def tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants that are alive now."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def tree_rss_by_process(pid: int) -> list[tuple[str, int]]:
    """(short command line, bytes resident) per process of the tree, largest first."""
    out = []
    for process in tree(pid):
        try:
            command = " ".join(process.cmdline()[1:4]) or process.name()
            out.append((command, process.memory_info().rss))
        except psutil.Error:
            continue
    return sorted(out, key=lambda item: -item[1])


def tree_high_water_mark(pid: int) -> int | None:
    """Each process's peak resident set since it started (Linux `VmHWM`), summed over the tree; None elsewhere.

    Unlike the samples this sees the start-up too (loading the home), but it adds peaks that may not coincide.
    """
    total = 0
    for process in tree(pid):
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
        except OSError:
            return None
        total += sum(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
    return total


class TreeSampler:
    """Samples the tree's resident memory and CPU time in a thread, every `SAMPLE_SECONDS`.

    CPU time of a worker that exits is kept (its last reading), so a restart does not make CPU go backwards.
    """

    def __init__(self, pid: int, every: float = SAMPLE_SECONDS) -> None:
        self.pid = pid
        self.every = every
        self.samples: list[Sample] = []
        self._last_cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)

    def __enter__(self) -> TreeSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def sample(self) -> Sample | None:
        rss = 0
        try:
            processes = tree(self.pid)
        except psutil.Error:
            return None
        for process in processes:
            try:
                with process.oneshot():
                    rss += process.memory_info().rss
                    times = process.cpu_times()
                    self._last_cpu[process.pid] = times.user + times.system
            except psutil.Error:
                continue
        sample = Sample(time.time(), rss, sum(self._last_cpu.values()))
        self.samples.append(sample)
        return sample

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]

    def peak_rss(self, start: float = 0.0, end: float = float("inf")) -> int:
        inside = self.between(start, end)
        return max((s.rss for s in inside), default=0)

    def cpu_share(self, start: float, end: float) -> float:
        """CPU seconds the tree used per wall second between `start` and `end` (1.0 = one core busy)."""
        inside = self.between(start, end)
        if len(inside) < 2 or inside[-1].at <= inside[0].at:
            return float("nan")
        return (inside[-1].cpu - inside[0].cpu) / (inside[-1].at - inside[0].at)
