"""The buffer's staging journal (edge_agent.uplink.buffer): under group commit, a record whose
`append` returned survives a SIGKILL of the agent, exactly once. A child process appends and
says on its stdout what each call returned; the test kills it (SIGKILL) where the world would
and counts with SQL on the file, and with the journal's bytes, against what was said."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_agent.uplink.buffer import Buffer
from tests.support.processes import processes  # noqa: F401  (a fixture)

GROUP = 50
CHILD = """
import os, signal, sys
from pathlib import Path
from edge_agent.uplink.buffer import Buffer

path, mode = Path(sys.argv[1]), sys.argv[2]
buf = Buffer(path, boot=int(sys.argv[3]), group_rows={group}, group_window_s=60.0)

def say(line):
    sys.stdout.write(line + "\\n")
    sys.stdout.flush()

if mode == "stream":  # append for ever, each returned seq said
    while True:
        say(str(buf.append("telemetry", {{"count": 400, "cpu_pct": 12.5}}).seq))
elif mode == "commit-then-die":  # 123 appended, killed between the COMMIT and the truncation
    for i in range(123):
        buf.append("telemetry", {{"i": i}})
    os.ftruncate = lambda fd, size: os.kill(os.getpid(), signal.SIGKILL)
    buf.flush()
    say("not killed")
elif mode == "commands":  # one command a line on stdin: "append PAD" or "flush"
    for line in sys.stdin:
        op, *arg = line.split()
        try:
            if op == "append":
                say("kept " + str(buf.append("telemetry", {{"pad": "x" * int(arg[0])}}).seq))
            else:
                buf.flush()
                say("flushed")
        except Exception as exc:
            say("refused " + getattr(exc, "reason", type(exc).__name__))
"""


def spawn(
    started: list[subprocess.Popen[str]], path: Path, mode: str, boot: int = 1
) -> subprocess.Popen[str]:
    script = path.parent.parent / f"child-{mode}.py"
    script.write_text(CHILD.format(group=GROUP), encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), mode, str(boot)],
        stdin=subprocess.PIPE if mode == "commands" else None,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    started.append(proc)
    return proc


def held(path: Path) -> list[tuple[int, int]]:
    """(boot, seq) of every row in the buffer's file, duplicates included, by plain SQL."""
    db = sqlite3.connect(path)
    try:
        return sorted(db.execute("SELECT boot, seq FROM records").fetchall())
    finally:
        db.close()


def reopen(path: Path, boot: int) -> None:
    """The agent's next start: the buffer opened under a new boot (replaying the journal)."""
    Buffer(path, boot=boot, group_rows=GROUP, group_window_s=60.0).close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_kill_anywhere_keeps_exactly_the_records_whose_append_returned(
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],  # noqa: F811
    seed: int,
) -> None:
    path = tmp_path / "disk" / "buffer.sqlite"
    path.parent.mkdir()
    proc = spawn(processes, path, "stream")
    assert proc.stdout is not None
    kill_after = random.Random(seed).randrange(1, 4 * GROUP)  # mid-group, or a few groups in
    returned: list[int] = []
    for line in proc.stdout:
        returned.append(int(line))
        if len(returned) > kill_after:
            break
    proc.kill()
    proc.wait(10)
    returned += [int(line) for line in proc.stdout]  # said before it died, read after
    reopen(path, boot=2)
    kept = held(path)
    assert len(kept) == len(set(kept))  # each once
    seqs = [seq for boot, seq in kept if boot == 1]
    # every returned record, in order and with no hole; at most the one it was appending
    # when killed beyond them (written, its `append` cut short before it returned)
    assert seqs[: len(returned)] == returned == list(range(len(returned)))
    assert len(seqs) - len(returned) in (0, 1)
    assert not (tmp_path / "disk" / "buffer.sqlite-staged").read_bytes()  # moved, then cut


def test_a_kill_between_the_commit_and_the_journal_cut_duplicates_nothing(
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    path = tmp_path / "disk" / "buffer.sqlite"
    path.parent.mkdir()
    proc = spawn(processes, path, "commit-then-die")
    assert proc.stdout is not None
    assert proc.stdout.read() == ""  # killed inside flush, before it could say anything
    assert proc.wait(10) == -9
    journal = path.with_name("buffer.sqlite-staged").read_bytes()
    # the last group (123 = 2 * 50 + 23) committed and still in the journal: the window
    assert journal.count(b"\n") == 23
    assert held(path) == [(1, seq) for seq in range(123)]
    for boot in (2, 3):  # replayed once, and a second start finds nothing more to do
        reopen(path, boot)
        assert held(path) == [(1, seq) for seq in range(123)]


def test_a_disk_full_during_a_journal_write_keeps_nothing_of_it_and_loses_nothing(
    tmp_path: Path,
    tmpfs: Any,
    processes: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    """A journal line that meets a full disk is cut back (even when the disk took part of it:
    a line longer than what its last page has left), its seq is not used, and after a kill
    the reopened buffer holds each accepted record once."""
    disk = tmpfs(tmp_path / "disk", "512k")
    path = disk.path / "buffer.sqlite"
    journal = path.with_name("buffer.sqlite-staged")
    proc = spawn(processes, path, "commands")
    assert proc.stdin is not None and proc.stdout is not None

    def ask(command: str) -> str:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(command + "\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    accepted = [int(ask("append 100").split()[1]) for _ in range(GROUP + 7)]
    assert accepted == list(range(GROUP + 7))
    disk.fill()
    before = journal.stat().st_size
    assert before % 4096  # its last page has room: a long line is half written
    answers = [ask("append 20000") for _ in range(3)]
    assert answers == ["refused disk-full"] * 3, answers
    assert journal.stat().st_size == before  # cut back each time
    disk.free()
    accepted.append(int(ask("append 100").split()[1]))
    assert accepted[-1] == GROUP + 7  # the refused used no seq
    proc.kill()
    proc.wait(10)
    reopen(path, boot=2)
    assert held(path) == [(1, seq) for seq in accepted]
