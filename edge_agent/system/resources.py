"""What the agent costs the board, for each telemetry record: CPU, resident memory, temperature.

Linux only, read from /proc and /sys (no psutil on the device). The parsing is pure and takes
the files' text; `ResourceMeter` does the reads. A telemetry record's `resources`::

    {"cpu_pct": 12.5, "rss_mb": 41.2, "rss_peak_mb": 44.0, "temp_c": 51.6}

`cpu_pct` is the agent process's CPU time (user + system) over the wall time since the previous
reading, in percent of one core (above 100 with several busy threads). `rss_mb` and
`rss_peak_mb` are VmRSS and VmHWM in MB (10^6 bytes). `temp_c` is the hottest thermal zone,
present only where the board exposes one. A key whose file cannot be read is left out:
resources are informative, never a reason to lose the record.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MB = 1e6
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_ticks(stat: str) -> int:
    """utime + stime (clock ticks) from the text of /proc/<pid>/stat. The command name, field
    2, is in parentheses and may itself hold spaces and parentheses: fields are counted from
    the last ')'."""
    _, paren, rest = stat.rpartition(")")
    fields = rest.split()
    if not paren or len(fields) < 13 or not (fields[11].isdigit() and fields[12].isdigit()):
        raise ValueError(f"/proc stat: expected 'pid (comm) state ...', found {stat[:60]!r}")
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def memory_kb(status: str) -> dict[str, int]:
    """VmRSS and VmHWM (kB) from the text of /proc/<pid>/status; absent ones are left out."""
    out = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            number, _, unit = value.strip().partition(" ")
            if unit.strip() == "kB" and number.isdigit():
                out[key] = int(number)
    return out


def temperature_c(readings: list[str]) -> float | None:
    """The hottest of thermal zones' `temp` files (millidegrees Celsius), None if none parse."""
    values = []
    for text in readings:
        try:
            values.append(int(text.strip()) / 1000)
        except ValueError:
            continue
    return round(max(values), 1) if values else None


def cpu_percent(ticks: int, wall: float, before: tuple[int, float], hz: int = _CLK_TCK) -> float:
    """CPU time spent between two readings, in percent of one core's wall time."""
    then_ticks, then_wall = before
    elapsed = wall - then_wall
    if elapsed <= 0:
        return 0.0
    return round((ticks - then_ticks) / hz / elapsed * 100, 1)


class ResourceMeter:
    """Reads the agent's own resources; `read(now)` once per telemetry window. `now` is a
    monotonic clock reading in seconds; the CPU share is measured from the previous reading (or
    from construction)."""

    def __init__(
        self, now: float, proc: Path = Path("/proc/self"), sys_root: Path = Path("/sys")
    ) -> None:
        self.proc = proc
        self.zones = sorted((sys_root / "class" / "thermal").glob("thermal_zone*/temp"))
        self._before: tuple[int, float] | None = None
        self._cpu(now)

    def _cpu(self, now: float) -> float | None:
        try:
            ticks = cpu_ticks((self.proc / "stat").read_text())
        except (OSError, ValueError):
            return None
        before, self._before = self._before, (ticks, now)
        return None if before is None else cpu_percent(ticks, now, before)

    def read(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        cpu = self._cpu(now)
        if cpu is not None:
            out["cpu_pct"] = cpu
        try:
            memory = memory_kb((self.proc / "status").read_text())
        except OSError:
            memory = {}
        if "VmRSS" in memory:
            out["rss_mb"] = round(memory["VmRSS"] * 1024 / MB, 1)
        if "VmHWM" in memory:
            out["rss_peak_mb"] = round(memory["VmHWM"] * 1024 / MB, 1)
        readings = []
        for zone in self.zones:
            try:  # some zones refuse reads (EINVAL, EAGAIN) while others work
                readings.append(zone.read_text())
            except OSError:
                continue
        temp = temperature_c(readings)
        if temp is not None:
            out["temp_c"] = temp
        return out


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def one_malloc_arena() -> bool:
    """Has glibc's malloc serve every thread from the one main arena (mallopt M_ARENA_MAX 1,
    what MALLOC_ARENA_MAX=1 does), for a daemon: by default each thread that allocates gets an
    arena of its own (up to 8 per core), each keeping pages of its own. The agent's threads
    (MQTT session, sender, buffer commits, inputs) mostly wait on I/O and its inference runs on
    the main thread, so they seldom contend for one arena; one arena saves about 0.3 MB
    resident (bench/agent_bench.py, the running agent). Called before the agent starts its
    threads. Left alone where MALLOC_ARENA_MAX is set (someone chose) and where the C library
    is not glibc; returns whether it was applied."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return False
    except (AttributeError, ValueError, OSError):  # not glibc (no such name)
        return False
    import ctypes  # loaded already where onnxruntime is

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, 1))
