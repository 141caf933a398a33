"""Verification of model bundles with TUF (`tuf.ngclient`), fed by what arrived over MQTT.

The hub publishes TUF metadata retained on `fleet/tuf/...`; the agent's MQTT session puts each
payload into a `mirror.TufMirror`, and `fetcher.MqttFetcher` serves ngclient from it (there is no
HTTP server anywhere). Every trust decision is ngclient's, made in a process of its own for the
update cycle (`tuf_check`: the agent never loads python-tuf, about 19 MB resident that an
imported module would keep for the daemon's life). This module maps its verdicts to rejection
reasons and adds the one rule TUF does not know: never a lower `model_version`, unless a signed
rollback returns to a version the hub signed as a rollback target. A delta is checked to rebuild
exactly the target the command names, from the bundle the signed metadata names. It also has a
command's signatures checked against the key the verified targets metadata delegates `commands`
to. Downloaded bytes are checked here against the signed length and hashes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Protocol

from edge_agent.errors import BundleRejected, ConfigError, EdgefleetError
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.messages import DeltaRef, ModelRef
from edge_agent.protocol.reasons import Reason
from edge_agent.protocol.transfer import chunk_count
from edge_agent.system.fsutil import atomic_write
from edge_agent.update.digest import sha256
from edge_agent.update.mirror import TufMirror

log = logging.getLogger(__name__)
CHECK_TIMEOUT_S = 120.0  # the longest one answer of the TUF check may take


@frozen
class VerifiedTarget:
    path: str
    model: ModelRef
    length: int
    card_sha256: str
    hashes: Mapping[str, str]  # as the signed targets metadata lists them
    custom: Mapping[str, Any]

    @property
    def sha256(self) -> str:
        return str(self.hashes["sha256"])

    @property
    def chunk_sha256(self) -> tuple[str, ...] | None:
        """The signed sha256 of each 64 KiB chunk, when the hub listed them: each chunk is
        then checked on arrival, and a bad one asked for again."""
        hashes = self.custom.get("chunk_sha256")
        if not isinstance(hashes, list) or len(hashes) != chunk_count(self.length):
            return None
        return tuple(str(h) for h in hashes)


@frozen
class _Entry:
    """A target's entry in the verified targets metadata."""

    length: int
    hashes: dict[str, str]
    custom: dict[str, Any]


class TufCheck(Protocol):
    """Where an update cycle's trust decisions are made (edge_agent.update.tuf_check)."""

    refreshed_at: int | None  # the mirror generation of its last refresh

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """The reply to `request`; BundleRejected when it refuses."""

    def close(self) -> None:
        """Ends it (the cycle is over)."""


CheckOpener = Callable[[Path], TufCheck]


class CheckFailed(EdgefleetError):
    """The TUF check could not be run (its process did not start, died or hung): the update
    is not installed, and the reason is not the bundle's."""


def _answered(reply: dict[str, Any]) -> dict[str, Any]:
    """A reply's content; BundleRejected with its reason, unless it says ok."""
    if reply.get("ok") is True:
        return reply
    try:
        reason = Reason(str(reply.get("reason")))
    except ValueError:
        reason = Reason.UNTRUSTED_METADATA
    raise BundleRejected(reason, str(reply.get("detail", f"the TUF check said {reply!r:.200}")))


class CheckProcess:
    """The `tuf_check` process of one cycle, requests and replies as JSON lines: what a device
    does (the default `CheckOpener`). Spawned with os.posix_spawn on two pipes rather than by
    the subprocess module, which would stay resident for the daemon's life (about 0.45 MB with
    selectors and locale) after its first update; its stderr is the agent's, so a traceback
    lands in the agent's log."""

    def __init__(self, tuf_dir: Path) -> None:
        self.refreshed_at: int | None = None  # the mirror generation of its last refresh
        self.returncode: int | None = None  # once it was reaped
        self._asked = 0
        self._reaping = threading.Lock()  # a pid is waited for once
        # Python opens descriptors non-inheritable: the child keeps only these two, as 0 and 1
        argv = [sys.executable, "-P", "-m", "edge_agent.update.tuf_check", str(tuf_dir)]
        fds: list[int] = []
        try:
            child_in, to_child = os.pipe()
            fds += (child_in, to_child)
            from_child, child_out = os.pipe()
            fds += (from_child, child_out)
            self._pid = os.posix_spawn(
                sys.executable,
                argv,
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, child_in, 0),
                    (os.POSIX_SPAWN_DUP2, child_out, 1),
                ],
            )
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            raise CheckFailed(f"the TUF check could not start {sys.executable}: {exc}") from exc
        os.close(child_in)
        os.close(child_out)
        # open for the check's life: `close` and `reap` close them
        self._stdin = open(to_child, "wb")  # noqa: SIM115
        self._stdout = open(from_child, "rb")  # noqa: SIM115

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """The reply carrying this request's id (lines without it are logged and skipped)."""
        self._asked += 1
        try:
            self._stdin.write(json.dumps({**request, "id": self._asked}).encode() + b"\n")
            self._stdin.flush()
            while line := _read_line(self._stdout, CHECK_TIMEOUT_S):
                reply = _json_object(line)
                if reply is not None and reply.get("id") == self._asked:
                    return _answered(reply)
                log.warning("the TUF check printed a line that is no reply: %r", line[:200])
        except (OSError, ValueError):  # ValueError: its input was closed already
            pass
        self._close_input()
        self.reap(5.0)  # here, not on a reaper thread: the error names its exit code
        raise CheckFailed(
            f"the TUF check gave no answer (exit code {self.returncode}; its error, if "
            "any, is in this log)"
        )

    def close(self) -> None:
        """Its input closes, so it ends; it is reaped on a thread of its own, so the update
        (its install, its health gate) does not wait for that."""
        self._close_input()
        reaper = threading.Thread(target=self.reap, args=(5.0,), name="tuf-check-reaper")
        reaper.daemon = True
        reaper.start()

    def _close_input(self) -> None:
        with contextlib.suppress(OSError):
            self._stdin.close()

    def reap(self, timeout: float) -> None:
        """Waits up to `timeout` seconds for it to end, then kills it; sets `returncode` and
        closes its output. Safe to call more than once, from more than one thread."""
        with self._reaping:
            if self.returncode is None:
                self.returncode = _wait(self._pid, timeout)
        with contextlib.suppress(OSError):
            self._stdout.close()


_POLL_S = 0.02  # how often a wait for the check's exit looks


def _wait(pid: int, timeout: float) -> int:
    """The exit code of child `pid` (negative: the signal that ended it), killed with SIGKILL
    if it has not ended within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): as subprocess says
            return 0
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL_S)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    try:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    except ChildProcessError:
        return -signal.SIGKILL


class CheckInProcess:
    """The same check in the calling process: for a fleet simulated in one process
    (cloud_hub.harness.simulate), where each device starting a process per update would
    measure process starts on shared cores, not the rollout; python-tuf is then loaded once
    for all of them. Not for a device: it keeps python-tuf resident."""

    def __init__(self, tuf_dir: Path) -> None:
        from edge_agent.update.tuf_check import Check

        self.refreshed_at: int | None = None
        self._check = Check(tuf_dir)

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        return _answered(self._check.answer(request))

    def close(self) -> None:
        self._check.updater = None


def _json_object(line: bytes) -> dict[str, Any] | None:
    try:
        found = json.loads(line)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def _read_line(stream: IO[bytes], timeout: float) -> bytes:
    """One line from the check, b"" when it ended or `timeout` passed (it is then stopped)."""
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return got[0] if got else b""


class Verifier:
    """Looks targets up in freshly refreshed TUF metadata and checks bundle bytes against them."""

    def __init__(
        self,
        tuf_dir: Path,
        mirror: TufMirror,
        max_bundle_bytes: int,
        open_check: CheckOpener = CheckProcess,
    ) -> None:
        if not (tuf_dir / "root.json").exists():
            raise ConfigError(
                f"{tuf_dir / 'root.json'}: no trusted root; the device must be enrolled "
                "with the hub's root.json"
            )
        self.tuf_dir = tuf_dir
        self.mirror = mirror
        self.max_bundle_bytes = max_bundle_bytes
        self._lock = threading.RLock()
        self._cycles = 0  # update cycles open (`cycle`)
        self._open_check = open_check
        self._check: TufCheck | None = None  # this cycle's

    @contextlib.contextmanager
    def cycle(self) -> Iterator[None]:
        """One update cycle, as TUF's client workflow has it: one command checked and acted on
        (its signature, then its target's lookup). One TUF check process serves the cycle;
        the metadata is refreshed at its first use and again only when new metadata arrived,
        instead of once per check (each refresh is about ten signature checks and canonical
        JSON encodings, and a write of the root history). The process ends with the cycle.
        Outside a cycle every check has a process and a refresh of its own."""
        with self._lock:
            self._cycles += 1
        try:
            yield
        finally:
            with self._lock:
                self._cycles -= 1
                if not self._cycles and self._check is not None:
                    self._check.close()
                    self._check = None

    @contextlib.contextmanager
    def _refreshed(self) -> Iterator[TufCheck]:
        """The TUF check over what arrived, refreshed (timestamp, snapshot, targets)."""
        with self._lock:
            check = self._check if self._cycles else None
            if check is None:
                check = self._open_check(self.tuf_dir)
                if self._cycles:
                    self._check = check
            try:
                generation, files = self.mirror.snapshot()
                if check.refreshed_at != generation:
                    check.refreshed_at = None  # a refresh that fails leaves nothing to reuse
                    encoded = {k: base64.b64encode(v).decode() for k, v in files.items()}
                    check.ask({"op": "refresh", "files": encoded})
                    check.refreshed_at = generation
                yield check
            except BaseException:
                if check is self._check:
                    self._check = None
                check.close()
                raise
            if check is not self._check:
                check.close()

    def _target(self, check: TufCheck, path: str) -> _Entry | None:
        found = check.ask({"op": "target", "path": path})["target"]
        if found is None:
            return None
        return _Entry(int(found["length"]), dict(found["hashes"]), dict(found["custom"]))

    def verify_command(self, payload: bytes, signatures: dict[str, str]) -> None:
        """`signatures` (keyid -> hex) must sign `payload` with the key the freshly verified
        targets metadata delegates `commands` to."""
        request = {"op": "command", "payload": base64.b64encode(payload).decode()}
        with self._refreshed() as check:
            check.ask({**request, "signatures": signatures})

    def rollback_target(self, model: ModelRef) -> bool:
        """Whether the verified targets sign `model` as one a rollback may return to."""
        with self._refreshed() as check:
            info = self._target(check, model.target_path)
        return info is not None and info.custom.get("rollback") is True

    def lookup(self, path: str, expected: ModelRef, running: ModelRef | None) -> VerifiedTarget:
        """Refresh metadata, find `path`, and check it is the model and version we were told."""
        with self._refreshed() as check:
            info = self._target(check, path)
        if info is None:
            raise BundleRejected(Reason.UNKNOWN_TARGET, f"{path} is not in the signed targets")
        custom = info.custom
        name, version = custom.get("model"), custom.get("model_version")
        if name != expected.name or version != expected.version:
            raise BundleRejected(
                Reason.MISMATCH,
                f"{path}: command said {expected}, signed metadata says {name}@{version}",
            )
        if (
            running is not None
            and running.name == expected.name
            and expected.version < (running.version)
        ):
            raise BundleRejected(
                Reason.DOWNGRADE,
                f"{expected} is older than the running {running}; versions only go up",
            )
        self._check_size(path, info.length)
        card = str(custom.get("card_sha256"))
        return VerifiedTarget(path, expected, info.length, card, info.hashes, custom)

    def _check_size(self, path: str, length: int) -> None:
        if length > self.max_bundle_bytes:
            raise BundleRejected(
                Reason.OVERSIZED,
                f"{path} is {length} bytes, the device accepts at most {self.max_bundle_bytes}",
            )

    def lookup_delta(self, ref: DeltaRef, target: VerifiedTarget) -> tuple[VerifiedTarget, str]:
        """The signed delta `ref` names, checked to rebuild exactly `target` from the bundle of
        `ref.base`; with the sha256 that bundle must have (signed twice: in the delta's entry
        and in the base's own, where the hub still lists it)."""
        with self._refreshed() as check:
            info = self._target(check, ref.target)
            base = self._target(check, ref.base.target_path)
        if info is None:
            raise BundleRejected(
                Reason.UNKNOWN_TARGET, f"{ref.target} is not in the signed targets"
            )
        pair = info.custom.get("delta")
        wanted = {
            "base": ref.base.target_path,
            "result": target.path,
            "result_sha256": target.sha256,
        }
        if not isinstance(pair, dict) or any(pair.get(k) != v for k, v in wanted.items()):
            raise BundleRejected(
                Reason.MISMATCH,
                f"{ref.target}: the command says it rebuilds {target.path} from "
                f"{ref.base.target_path}, the signed metadata says {pair!r:.200}",
            )
        base_sha256 = pair.get("base_sha256")
        if not isinstance(base_sha256, str) or (
            base is not None and base.hashes.get("sha256") != base_sha256
        ):
            raise BundleRejected(
                Reason.MISMATCH,
                f"{ref.target}: its base sha256 {base_sha256!r:.70} is not the one signed for "
                f"{ref.base.target_path}",
            )
        self._check_size(ref.target, info.length)
        delta = VerifiedTarget(
            ref.target, target.model, info.length, target.card_sha256, info.hashes, info.custom
        )
        return delta, base_sha256

    def check(self, target: VerifiedTarget, data: bytes) -> None:
        """The downloaded bytes must have the signed length and every signed hash (a target
        signed without a sha256 is not trusted)."""
        if len(data) < target.length:
            raise BundleRejected(
                Reason.TRUNCATED, f"{target.path}: got {len(data)} of {target.length} bytes"
            )
        if len(data) > target.length:
            raise BundleRejected(
                Reason.OVERSIZED, f"{target.path}: got {len(data)} bytes, signed {target.length}"
            )
        if "sha256" not in target.hashes:
            raise BundleRejected(
                Reason.UNTRUSTED_METADATA, f"{target.path}: signed without a sha256"
            )
        for algorithm, signed in target.hashes.items():
            found = _digest(algorithm, data)
            if found != signed:
                raise BundleRejected(
                    Reason.TAMPERED,
                    f"{target.path}: {algorithm} {found[:16]}... does not match the signed "
                    f"{str(signed)[:16]}...",
                )


def _digest(algorithm: str, data: bytes) -> str:
    """The hex digest; sha256 without OpenSSL (edge_agent.update.digest), others by hashlib."""
    if algorithm == "sha256":
        return sha256(data).hexdigest()
    import hashlib  # only for a hash the hub does not sign with today

    try:
        return hashlib.new(algorithm, data).hexdigest()
    except ValueError:
        return f"(unknown algorithm {algorithm!r})"


def install_trusted_root(tuf_dir: Path, root: bytes) -> None:
    """Enrollment: the device starts trusting the hub's root metadata."""
    atomic_write(tuf_dir / "root.json", root)
