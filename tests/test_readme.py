"""README.md runs as written, and links only to files in the repository.

Every ```sh block of README.md runs, in order, in one bash session (`set -eo pipefail`) in a fresh
folder whose `.venv` is the project's virtualenv, as a newcomer would run them from a checkout
after `make demo`'s setup. The README starts its own mosquitto on `MQTT_PORT` and its dashboard on
`HTTP_PORT`; the test picks free ones. A block the test must not run says why in a
`<!-- not-run: REASON -->` line right before its fence; a block only for reading has another
language (```text, ```toml, ```yaml). Each block must exit 0 within BLOCK_TIMEOUT_S, print no
traceback, show the rollout states its `--watch` comments promise, and the README must stop every
process it started.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cloud_hub.broker.local import free_port
from edge_agent.protocol.frozen import frozen

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
ARCHITECTURE = REPO / "docs" / "architecture.md"
RUN = "sh"  # the one language the test runs
UNKNOWN = ("", "bash", "shell", "console", "zsh")  # shell the extractor would not know to run
FENCE = re.compile(r"^```(\S*)\s*$")
NOT_RUN = re.compile(r"^<!--\s*not-run:(.*?)-->\s*$")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
WATCH_PROMISE = re.compile(r"--watch\b.*#\s*([a-z-]+)")
MARK = "::readme-block"
BLOCK_TIMEOUT_S = 180.0
STARTUP_TIMEOUT_S = 30.0
TRACEBACK = "Traceback (most recent call last)"


@frozen
class Block:
    lang: str
    line: int  # of the opening fence, from 1
    code: str
    not_run: str | None  # the reason given, when the block is marked not to run


def fenced_blocks(text: str, name: str = "README.md") -> list[Block]:
    """The fenced blocks of a Markdown text, in order, with the not-run mark before each."""
    lines = text.splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            if NOT_RUN.match(lines[i]) and not (i + 1 < len(lines) and FENCE.match(lines[i + 1])):
                raise ValueError(f"{name}:{i + 1}: a not-run mark must stand right before a fence")
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        if end == len(lines):
            raise ValueError(f"{name}:{i + 1}: a ```{fence.group(1)} fence is never closed")
        mark = NOT_RUN.match(lines[i - 1]) if i else None
        code = "\n".join(lines[i + 1 : end]) + "\n"
        found.append(Block(fence.group(1), i + 1, code, mark.group(1).strip() if mark else None))
        i = end + 1
    return found


def runnable(blocks: list[Block]) -> list[Block]:
    return [b for b in blocks if b.lang == RUN and b.not_run is None]


def watch_promises(code: str) -> list[str]:
    """The states a block's `rollout status ID --watch   # STATE ...` comments promise, in order."""
    return [m.group(1) for line in code.splitlines() if (m := WATCH_PROMISE.search(line))]


def missing_in_order(output: str, words: list[str]) -> str | None:
    """The first of `words` that `output` does not show after the ones before it, or None."""
    at = 0
    for word in words:
        found = output.find(word, at)
        if found < 0:
            return word
        at = found + len(word)
    return None


def bad_links(path: Path) -> list[str]:
    """Links in a Markdown file that leave the repository or name a file that is not there."""
    bad = []
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        file = target.split("#", 1)[0]
        resolved = (path.parent / file).resolve()
        if ".." in Path(file).parts or file.startswith("/") or not resolved.is_relative_to(REPO):
            bad.append(f"{target} (outside the repository)")
        elif not resolved.exists():
            bad.append(f"{target} (no such file)")
    return bad


def named_paths(text: str) -> list[str]:
    """Repository paths a doc names in backticks (`edge_agent/uplink/buffer.py`, `cloud_hub/`)."""
    return [
        p
        for p in re.findall(r"`([^`\s]+)`", text)
        if "/" in p and re.fullmatch(r"[\w*./-]+", p) and not p.startswith(("/", "."))
    ]


# --- the README's form: fast, no broker ---------------------------------------------------


def test_the_extractor_reads_languages_marks_and_lines() -> None:
    text = (
        "intro\n```sh\necho one\n```\n\n<!-- not-run: needs root -->\n```sh\nsudo x\n```\n"
        "```toml\na = 1\n```\n"
    )
    blocks = fenced_blocks(text)
    assert [(b.lang, b.line, b.not_run) for b in blocks] == [
        ("sh", 2, None),
        ("sh", 7, "needs root"),
        ("toml", 10, None),
    ]
    assert [b.code for b in runnable(blocks)] == ["echo one\n"]
    with pytest.raises(ValueError, match=r"README.md:1: a not-run mark must stand right before"):
        fenced_blocks("<!-- not-run: x -->\n\n```sh\nx\n```\n")
    with pytest.raises(ValueError, match=r"README.md:1: a ```sh fence is never closed"):
        fenced_blocks("```sh\nx\n")


def test_watch_promises_are_read_and_checked_in_order() -> None:
    code = "a --watch   # halted: wave 1\nb --watch # completed, a gate verdict\nc # none\n"
    assert watch_promises(code) == ["halted", "completed"]
    assert missing_in_order("state halted ... state completed", ["halted", "completed"]) is None
    assert missing_in_order("state completed ... halted", ["halted", "completed"]) == "completed"


def test_every_block_says_whether_it_runs() -> None:
    blocks = fenced_blocks(README.read_text(encoding="utf-8"))
    unknown = [f"README.md:{b.line}: ```{b.lang}" for b in blocks if b.lang in UNKNOWN]
    assert not unknown, f"expected ```sh (run) or a reading language (```text, ```toml): {unknown}"
    reasonless = [f"README.md:{b.line}" for b in blocks if b.not_run == ""]
    assert not reasonless, f"expected a reason in each not-run mark, none at {reasonless}"
    marked = [b for b in blocks if b.not_run is not None]
    assert all(b.lang == RUN for b in marked), "a not-run mark belongs before a ```sh block"
    assert len(runnable(blocks)) >= 3, "expected the README's walk-throughs to run"


def test_links_stay_inside_the_repository() -> None:
    for doc in [README, *sorted((REPO / "docs").glob("*.md"))]:
        assert not bad_links(doc), f"{doc.relative_to(REPO)}: {bad_links(doc)}"


def test_the_architecture_and_the_layout_name_paths_that_exist() -> None:
    """docs/architecture.md maps questions to modules and README.md's Layout names folders; after
    a move both must follow."""
    layout = README.read_text(encoding="utf-8").split("\n## Layout\n", 1)[1].split("\n## ")[0]
    for doc, text, least in [
        ("docs/architecture.md", ARCHITECTURE.read_text(encoding="utf-8"), 20),
        ("README.md's Layout", layout, 6),
    ]:
        named = named_paths(text)
        assert len(named) >= least, f"{doc}: expected {least} paths or more, got {named}"
        gone = [p for p in named if not list(REPO.glob(p.rstrip("/")))]
        assert not gone, f"{doc} names paths that are not in the repository: {gone}"


# --- the README's blocks, run ------------------------------------------------------------


def _venv() -> Path:
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").exists() or not (venv / "bin" / "edgehub").exists():
        pytest.fail(
            f"the README runs `. .venv/bin/activate` and `edgehub`: expected the tests to run in "
            f"the project's virtualenv with edgefleet installed (make test does), got {venv}",
            pytrace=False,
        )
    return venv


def _script(blocks: list[Block], folder: Path) -> Path:
    lines = ["set -eo pipefail"]
    for n, block in enumerate(blocks):
        (folder / f"block-{n}.sh").write_text(block.code, encoding="utf-8")
        code = folder / f"block-{n}.sh"
        lines += [f"echo '{MARK} {n} begin'", f". '{code}'", f"echo '{MARK} {n} end'"]
    script = folder / "readme.sh"
    script.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return script


def _stop_group(pgid: int) -> bool:
    """SIGTERM, then SIGKILL, to what is left of the process group; True if anything was."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)  # polling for the group's end; nothing to wait on for processes not ours
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    return True


@pytest.mark.broker
@pytest.mark.timeout(900)
def test_readme_shell_blocks_run_as_written(mosquitto_binary: str, tmp_path: Path) -> None:
    blocks = runnable(fenced_blocks(README.read_text(encoding="utf-8")))
    venv = _venv()
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / ".venv").symlink_to(venv, target_is_directory=True)
    script = _script(blocks, tmp_path)
    env = {
        **os.environ,
        "PATH": os.pathsep.join(
            [str(venv / "bin"), str(Path(mosquitto_binary).parent), os.environ.get("PATH", "")]
        ),
        "MQTT_PORT": str(free_port()),
        "HTTP_PORT": str(free_port()),
        "PYTHONUNBUFFERED": "1",
    }
    lines: queue.Queue[str | None] = queue.Queue()
    proc = subprocess.Popen(
        ["bash", str(script)],
        cwd=checkout,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )

    log = tmp_path / "readme.log"  # the whole session, background processes included

    def read() -> None:
        assert proc.stdout is not None
        with log.open("w", encoding="utf-8") as kept:
            for line in proc.stdout:
                kept.write(line)
                kept.flush()
                lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    outputs: list[list[str]] = [[] for _ in blocks]
    timings: list[float] = [0.0 for _ in blocks]
    current, started = -1, time.monotonic()
    deadline = started + STARTUP_TIMEOUT_S
    left_running = False
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                if current < 0:
                    pytest.fail(f"the README's script did not start in {STARTUP_TIMEOUT_S:g} s")
                pytest.fail(
                    f"README.md:{blocks[current].line}: the block still ran after "
                    f"{BLOCK_TIMEOUT_S:g} s; its output ended with:\n"
                    + "".join(outputs[current][-60:]),
                    pytrace=False,
                )
            if line is None:
                break
            mark = re.search(rf"{MARK} (\d+) (begin|end)", line)
            if mark and mark.group(2) == "begin":
                current, started = int(mark.group(1)), time.monotonic()
                deadline = started + BLOCK_TIMEOUT_S
            elif mark:
                timings[current] = time.monotonic() - started
            elif current >= 0:
                outputs[current].append(line)
        rc = proc.wait(timeout=30)
    finally:
        left_running = _stop_group(proc.pid)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print("README blocks, seconds each:", [f"{t:.1f}" for t in timings])
    failed = current if rc != 0 else None
    if failed is not None:
        block = blocks[failed]
        pytest.fail(
            f"README.md:{block.line}: the block exited {rc} (the whole session: {log}); "
            "its output ended with:\n" + "".join(outputs[failed][-60:]),
            pytrace=False,
        )
    assert current == len(blocks) - 1, f"ran {current + 1} of {len(blocks)} blocks"
    for block, output in zip(blocks, outputs, strict=True):
        text = "".join(output)
        assert TRACEBACK not in text, f"README.md:{block.line}: a traceback:\n{text[-4000:]}"
        missing = missing_in_order(text, watch_promises(block.code))
        assert missing is None, (
            f"README.md:{block.line}: the README promises {missing!r} from `--watch`, in the order "
            f"{watch_promises(block.code)}; the block printed:\n{text[-4000:]}"
        )
    assert not left_running, "the README left processes running after its last block"
