"""Resources in telemetry: parsing canned /proc and /sys text, then the real /proc of this
process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edge_agent.system.resources import (
    ResourceMeter,
    cpu_percent,
    cpu_ticks,
    memory_kb,
    temperature_c,
)

# proc(5): pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
# utime stime ...; the command name may hold spaces and parentheses
STAT = "4242 (edge agent (x) ) S 1 4242 4242 0 -1 4194560 1500 0 3 0 250 70 0 0 20 0 5 0 99"
STATUS = """Name:\tedge-agent
VmPeak:\t  412000 kB
VmHWM:\t   44000 kB
VmRSS:\t   41016 kB
Threads:\t5
"""


def test_cpu_ticks_counts_fields_from_the_last_parenthesis() -> None:
    assert cpu_ticks(STAT) == 250 + 70
    assert cpu_ticks(STAT.replace("(edge agent (x) )", "(python3)")) == 320


@pytest.mark.parametrize(
    "text", ["", "4242 python3 S 1", "4242 (x) S 1 2 3", "1 (x) S " + "a " * 13]
)
def test_cpu_ticks_refuses_what_is_not_a_stat_line(text: str) -> None:
    with pytest.raises(ValueError, match="stat"):
        cpu_ticks(text)


def test_memory_kb_reads_rss_and_high_water_mark() -> None:
    assert memory_kb(STATUS) == {"VmRSS": 41016, "VmHWM": 44000}
    assert memory_kb("Name:\tkthreadd\nThreads:\t1\n") == {}  # kernel threads have neither
    assert memory_kb("VmRSS:\t garbage kB\nVmHWM:\t12 MB\n") == {}


def test_temperature_is_the_hottest_zone_that_reads() -> None:
    assert temperature_c(["48312\n", "51600\n", "not a number\n"]) == 51.6
    assert temperature_c([]) is None
    assert temperature_c(["", "x"]) is None
    assert temperature_c(["-5000"]) == -5.0


def test_cpu_percent_of_one_core_between_two_readings() -> None:
    assert cpu_percent(150, wall=11.0, before=(100, 10.0), hz=100) == 50.0
    assert cpu_percent(500, wall=12.0, before=(100, 10.0), hz=100) == 200.0  # two busy threads
    assert cpu_percent(100, wall=10.0, before=(100, 10.0), hz=100) == 0.0  # no time passed


def test_meter_reads_a_board_from_its_files(tmp_path: Path) -> None:
    proc, sys_root = tmp_path / "proc", tmp_path / "sys"
    proc.mkdir()
    (proc / "stat").write_text(STAT)
    (proc / "status").write_text(STATUS)
    for i, milli in enumerate(("47000", "53250")):
        zone = sys_root / "class" / "thermal" / f"thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "temp").write_text(milli + "\n")
    meter = ResourceMeter(now=100.0, proc=proc, sys_root=sys_root)
    (proc / "stat").write_text(STAT.replace(" 250 70 ", " 300 120 "))  # 100 ticks later
    got = meter.read(now=102.0)
    assert got == {
        "cpu_pct": pytest.approx(round(100 / os.sysconf("SC_CLK_TCK") / 2 * 100, 1), abs=0.1),
        "rss_mb": 42.0,  # 41016 kB = 41.999 MB
        "rss_peak_mb": 45.1,
        "temp_c": 53.2,
    }


def test_meter_leaves_out_what_the_board_does_not_have(tmp_path: Path) -> None:
    meter = ResourceMeter(now=0.0, proc=tmp_path / "no-proc", sys_root=tmp_path / "no-sys")
    assert meter.read(now=1.0) == {}


def test_meter_on_the_real_proc_of_this_process() -> None:
    meter = ResourceMeter(now=time.monotonic())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # burn some CPU between the readings
        sum(range(1000))
    got = meter.read(now=time.monotonic())
    assert 0 < got["cpu_pct"] < 100 * (len(os.sched_getaffinity(0)) + 1)
    assert 5 < got["rss_mb"] <= got["rss_peak_mb"] < 10_000  # an interpreter with numpy
    zones = list(Path("/sys/class/thermal").glob("thermal_zone*/temp"))
    if not zones:
        assert "temp_c" not in got


# a thread that allocates (above pymalloc's small objects, so through malloc), then glibc's
# malloc_stats, which prints one "Arena N:" per arena to stderr
ARENAS = textwrap.dedent(
    """
    import ctypes, threading
    from edge_agent.system.resources import one_malloc_arena
    print(one_malloc_arena())
    def allocate():
        kept = [bytes(4000) for _ in range(100)]
    thread = threading.Thread(target=allocate)
    thread.start()
    thread.join()
    ctypes.CDLL(None).malloc_stats()
    """
)


@pytest.mark.skipif(
    not (getattr(os, "confstr", lambda _: "")("CS_GNU_LIBC_VERSION") or "").startswith("glibc"),
    reason="glibc's malloc only",
)
@pytest.mark.parametrize("preset", [None, "4"])
def test_one_malloc_arena_serves_every_thread_unless_malloc_arena_max_is_set(
    preset: str | None,
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    if preset is not None:
        env["MALLOC_ARENA_MAX"] = preset
    out = subprocess.run(
        [sys.executable, "-c", ARENAS],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,  # this checkout's edge_agent
    )
    assert out.returncode == 0, out.stderr
    arenas = out.stderr.count("Arena ")
    if preset is None:
        assert out.stdout.split() == ["True"]
        assert arenas == 1, out.stderr
    else:  # left to the environment: the thread got an arena of its own
        assert out.stdout.split() == ["False"]
        assert arenas == 2, out.stderr
