"""The agent's buffer folder read as plain text, as another process would, not through
edge_agent.uplink.buffer: segment files `<n>.log` of record lines (kind, boot, seq, ts, body,
tab-separated) and `gone.log` (`c boot first last` confirmed, `d kind boot seq` dropped)."""

from __future__ import annotations

from pathlib import Path


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="ascii").split("\n")[:-1]  # after the last newline: unfinished


def on_disk(folder: Path) -> list[tuple[int, int]]:
    """(boot, seq) of every record line the segments hold, sorted, duplicates included."""
    keys = []
    for path in folder.glob("[0-9]*.log"):
        for line in _lines(path):
            _, boot, seq, _ = line.split("\t", 3)
            keys.append((int(boot), int(seq)))
    return sorted(keys)


def gone(folder: Path) -> set[tuple[int, int]]:
    """(boot, seq) the gone log says left the buffer (confirmed or dropped)."""
    out: set[tuple[int, int]] = set()
    path = folder / "gone.log"
    for line in _lines(path) if path.exists() else []:
        tag, *rest = line.split("\t")
        if tag == "c":
            boot, first, last = map(int, rest)
            out |= {(boot, seq) for seq in range(first, last + 1)}
        elif tag == "d":
            out.add((int(rest[1]), int(rest[2])))
    return out


def held(folder: Path) -> set[tuple[int, int]]:
    """(boot, seq) of the records the buffer still holds."""
    return set(on_disk(folder)) - gone(folder)


def ever_appended(folder: Path) -> int:
    """How many records were ever appended, from every boot's highest seq the files name: a
    boot's seqs have no gap. Exact while the gone log was never rewritten (no `t` line)."""
    path = folder / "gone.log"
    assert not path.exists() or "\nt\t" not in "\n" + path.read_text(), "the gone log was rewritten"
    top: dict[int, int] = {}
    for boot, seq in set(on_disk(folder)) | gone(folder):
        top[boot] = max(seq, top.get(boot, -1))
    return sum(seq + 1 for seq in top.values())
