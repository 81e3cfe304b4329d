"""psutil sampling of cluster process trees: CPU, RSS, PSS and USS (whole tree), threads, status.

PSS (shared pages divided among the processes sharing them) and USS (pages only this tree holds) come from
``memory_full_info()``; a cluster forked from the launcher shares the libraries' pages, so its RSS counts
them whole while its PSS and USS show what it really costs.

One :class:`psutil.Process` object is kept per pid for its life (the first ``cpu_percent()`` of a fresh object
is 0.0, so objects are primed once and reused). Children are found through
``/proc/<pid>/task/<tid>/children`` (cheap, exact) with psutil's ``children()`` as the fallback. Every psutil
call tolerates ``NoSuchProcess``, ``ZombieProcess`` and ``AccessDenied``: a process may end at any moment.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import psutil

__all__ = ["TreeReading", "TreeSampler", "descendants"]

_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied, ProcessLookupError, OSError)


@dataclass(frozen=True)
class TreeReading:
    """One reading of a process tree."""

    cpu_percent: float
    rss: int
    threads: int
    status: str
    pids: tuple[int, ...]
    #: proportional set size (bytes, 0 when the kernel does not tell)
    pss: int = 0
    #: unique set size (bytes, 0 when the kernel does not tell)
    uss: int = 0


def _proc_children(pid: int) -> list[int] | None:
    """Direct children from /proc (None when the kernel does not offer the file)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    except OSError:
        return None
    found: list[int] = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as handle:
                found.extend(int(x) for x in handle.read().split())
        except FileNotFoundError:
            if not os.path.isdir(f"/proc/{pid}/task/{tid}"):
                continue  # the thread ended meanwhile
            return None  # the kernel has no children file
        except (OSError, ValueError):
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Every descendant pid of ``pid`` right now (depth first); empty when it is gone."""
    result: list[int] = []
    stack = [pid]
    seen = {pid}
    while stack:
        current = stack.pop()
        children = _proc_children(current)
        if children is None:
            try:
                children = [c.pid for c in psutil.Process(current).children(recursive=False)]
            except _GONE:
                children = []
        for child in children:
            if child not in seen:
                seen.add(child)
                result.append(child)
                stack.append(child)
    return result


def _memory(proc: psutil.Process) -> Any:
    """``memory_full_info()`` (with pss/uss), or ``memory_info()`` where smaps cannot be read."""
    try:
        return proc.memory_full_info()
    except psutil.AccessDenied:
        return proc.memory_info()


class TreeSampler:
    """Samples process trees, keeping a primed ``psutil.Process`` per pid for as long as it lives."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def process(self, pid: int) -> psutil.Process | None:
        """The cached object for ``pid`` (created and primed on first use); None when it is gone."""
        proc = self._procs.get(pid)
        if proc is not None:
            return proc
        try:
            proc = psutil.Process(pid)
            proc.cpu_percent(None)  # prime: the first reading is always 0.0
        except _GONE:
            return None
        self._procs[pid] = proc
        return proc

    def forget(self, pids: Iterable[int]) -> None:
        for pid in pids:
            self._procs.pop(pid, None)

    def sample_tree(self, root: int) -> TreeReading | None:
        """CPU % (sum over the tree), RSS (sum), threads (sum) and the root's status; None if the root is gone."""
        pids = [root, *descendants(root)]
        cpu = 0.0
        rss = threads = pss = uss = 0
        status = "gone"
        alive: list[int] = []
        for pid in pids:
            proc = self.process(pid)
            if proc is None:
                continue
            try:
                with proc.oneshot():
                    cpu += proc.cpu_percent(None)
                    memory = _memory(proc)
                    rss += memory.rss
                    pss += getattr(memory, "pss", 0)
                    uss += getattr(memory, "uss", 0)
                    threads += proc.num_threads()
                    if pid == root:
                        status = proc.status()
                alive.append(pid)
            except _GONE:
                self._procs.pop(pid, None)
        if root not in alive:
            return None
        return TreeReading(cpu_percent=cpu, rss=rss, threads=threads, status=status, pids=tuple(alive), pss=pss,
                           uss=uss)

    def sample(self, roots: Mapping[int, int]) -> dict[int, TreeReading]:
        """Sample every tree (``{key: root pid}``); trees that are gone are left out. Drops dead pids' objects."""
        result: dict[int, TreeReading] = {}
        for key, root in roots.items():
            sample = self.sample_tree(root)
            if sample is not None:
                result[key] = sample
        live = {pid for s in result.values() for pid in s.pids} | {os.getpid()}
        self.forget([pid for pid in self._procs if pid not in live])
        return result

    def sample_self(self) -> tuple[float, int]:
        """CPU % and RSS of the supervisor process itself."""
        proc = self.process(os.getpid())
        if proc is None:
            return 0.0, 0
        with contextlib.suppress(*_GONE):
            with proc.oneshot():
                return proc.cpu_percent(None), proc.memory_info().rss
        return 0.0, 0
