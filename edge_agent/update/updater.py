"""The secure update path on the device: offered -> downloading -> verified -> installed ->
healthy, or rejected / rolled-back with a reason. Nothing is installed before it is verified,
and a model that fails its health gate after install is rolled back automatically.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.errors import BadDataError, BundleRejected, ConfigError, MessageError
from edge_agent.inference.runtime import Runtime, RuntimeLoader, load_runtime
from edge_agent.inference.shadow import Shadow
from edge_agent.protocol.commands import SignedCommand
from edge_agent.protocol.messages import (
    Command,
    ModelRef,
    XferChunk,
    XferRequest,
    decode_xfer_chunk,
    encode,
)
from edge_agent.protocol.reasons import Reason
from edge_agent.protocol.transfer import Reassembly
from edge_agent.update.bundle import Bundle, read_bundle
from edge_agent.update.commands import CommandGate
from edge_agent.update.digest import sha256_hex
from edge_agent.update.health import check_health
from edge_agent.update.partial import PartialTransfer
from edge_agent.update.store import ModelStore
from edge_agent.update.verify import VerifiedTarget, Verifier

if TYPE_CHECKING:  # cryptography (about 6 MB resident) loads with the first encrypted transfer
    from edge_agent.system.identity import DeviceIdentity

log = logging.getLogger(__name__)

MAX_BAD_TRIES = 3  # a chunk failing its check this often: the source itself is bad
Emit = Callable[[str, ModelRef | None, str, str | None], None]  # event, model, reason, rollout


@dataclass
class Fetched:
    data: bytes
    chunks: int
    resumed: int  # chunks kept from an interrupted attempt
    fetched_twice: int  # chunks paid for more than once (lost, late, rejected, duplicated)
    bad_chunks: int  # chunks that failed their check on arrival

    def summary(self) -> str:
        return (
            f"{self.chunks} chunks, {self.resumed} resumed, {self.fetched_twice} fetched twice, "
            f"{self.bad_chunks} failed their check"
        )


class TransferInterrupted(Exception):
    """The agent is stopping mid-transfer: what arrived is checkpointed on disk and the deploy
    command stays pending, so the next start resumes the transfer instead of starting over."""


class Downloader:
    """Pulls the chunks of one target over MQTT: asks within a window, re-asks what is late or
    fails its check, keeps what arrived on disk so that a restart resumes, and opens chunks
    sealed for this device when the transfer is encrypted.

    Chunks are asked for in batches: the asking thread is woken when half the window has
    arrived (or the transfer completed or failed), not at every chunk, so a transfer of n
    chunks costs about 2n/window requests, wake-ups and hub look-ups instead of n."""

    def __init__(
        self,
        publish: Callable[[bytes], object],
        window: int,
        partial_dir: Path,
        identity: Callable[[], DeviceIdentity | None] = lambda: None,
        retry_after: float = 5.0,
        checkpoint_every: int = 16,
        stop: threading.Event | None = None,
    ) -> None:
        self._publish = publish
        self._stop = stop
        self._window = window
        self._partial_dir = partial_dir
        self._load_identity = identity  # called on the first encrypted transfer
        self._identity: DeviceIdentity | None = None
        self._retry_after = retry_after
        self._checkpoint_every = checkpoint_every
        self._job: _Job | None = None
        self._arrived = threading.Event()
        self._lock = threading.Lock()

    def on_chunk(self, _topic: str, payload: bytes) -> None:
        chunk = decode_xfer_chunk(payload)
        with self._lock:
            job = self._job
            if job is None or chunk.target != job.target.path:
                return  # a late chunk of an earlier transfer
            job.arrived_at = time.monotonic()
            try:
                job.take(chunk)
            except BundleRejected as exc:
                job.failure = exc
            r = job.reassembly
            wake = job.failure is not None or r.complete or r.in_flight <= self._window // 2
        if wake:  # otherwise the rest of the batch is on its way: ask when half has come
            self._arrived.set()

    def fetch(self, target: VerifiedTarget, timeout: float, encrypted: bool = False) -> Fetched:
        if encrypted and self._identity is None:
            try:
                self._identity = self._load_identity()
            except ConfigError as exc:
                raise BundleRejected(Reason.NOT_ENROLLED, str(exc)) from exc
            if self._identity is None:
                raise BundleRejected(
                    Reason.NOT_ENROLLED,
                    "an encrypted transfer needs the device's identity; run `edge-agent enroll`",
                )
        partial = PartialTransfer(self._partial_dir, target.path, target.length, target.sha256)
        job = _Job(target, Reassembly(target.path, target.length), partial, self._identity)
        job.encrypted = encrypted
        partial.restore(job.reassembly)
        with self._lock:
            self._job = job
        deadline = time.monotonic() + timeout
        try:
            while True:
                with self._lock:
                    if job.failure is not None:
                        raise job.failure
                    r = job.reassembly
                    if r.complete:
                        partial.checkpoint(r)
                        job.unsaved = 0
                        return Fetched(
                            partial.read(r), r.total, r.resumed, r.fetched_twice, job.bad_chunks
                        )
                    if self._stop is not None and self._stop.is_set():
                        raise TransferInterrupted(
                            f"{target.path}: stopping with {r.received} of {r.total} chunks"
                        )
                    bits = None
                    if job.unsaved >= self._checkpoint_every:
                        bits, job.unsaved = r.bitmap(), 0  # chunks already written
                    wanted = r.to_request(
                        time.monotonic(), self._window, self._retry_after, job.arrived_at
                    )
                if wanted:
                    self._publish(encode(XferRequest(target.path, tuple(wanted), encrypted)))
                if bits is not None:  # the fsync outside the lock: chunks keep coming in
                    partial.save(bits)
                if time.monotonic() > deadline:
                    raise BundleRejected(
                        Reason.TRUNCATED,
                        f"{target.path}: {r.received} of {r.total} chunks arrived within "
                        f"{timeout:.0f}s (kept for the next attempt)",
                    )
                self._arrived.wait(0.5)
                self._arrived.clear()
        finally:
            with self._lock:
                self._job = None
                try:
                    if job.unsaved:  # what arrived since the last checkpoint (none: said already)
                        job.partial.checkpoint(job.reassembly)
                finally:
                    job.partial.close()

    def discard(self, target: VerifiedTarget) -> None:
        """Forget what was kept of `target` (installed, or rejected as a whole)."""
        PartialTransfer(self._partial_dir, target.path, target.length, target.sha256).discard()


class _Job:
    """One transfer in progress (guarded by the Downloader's lock)."""

    def __init__(
        self,
        target: VerifiedTarget,
        reassembly: Reassembly,
        partial: PartialTransfer,
        identity: DeviceIdentity | None,
    ) -> None:
        self.target = target
        self.reassembly = reassembly
        self.partial = partial
        self.identity = identity
        self.encrypted = False
        self.hashes = target.chunk_sha256
        self.failure: BundleRejected | None = None
        self.bad_chunks = 0
        self.unsaved = 0
        self.arrived_at = -math.inf  # monotonic time of the last chunk that came in
        self._keys: dict[bytes, bytes] = {}  # wrapped transfer key -> key
        self._tries: dict[int, int] = {}  # chunk index -> failed checks

    def take(self, chunk: XferChunk) -> None:
        r = self.reassembly
        data = chunk.data
        if chunk.size != r.size:
            # before the chunk's own check: a source whose target has another length than the
            # signed one is serving a truncated (or oversized) target, not one bad chunk
            raise BundleRejected(
                Reason.OVERSIZED if chunk.size > r.size else Reason.TRUNCATED,
                f"{r.target}: signed length is {r.size} bytes, the sender announced {chunk.size}",
            )
        if self.encrypted:
            if chunk.key is None:
                return self._bad(chunk.index)  # plaintext in an encrypted transfer
            from edge_agent.update.crypto import open_chunk, unwrap_key

            key = self._keys.get(chunk.key)
            if key is None:
                assert self.identity is not None  # checked before the job starts
                key = self._keys[chunk.key] = unwrap_key(self.identity, chunk.key, r.target)
            try:
                data = open_chunk(key, r.target, chunk.index, chunk.size, data)
            except BundleRejected:
                return self._bad(chunk.index)
        hashes = self.hashes
        if hashes and 0 <= chunk.index < len(hashes) and sha256_hex(data) != hashes[chunk.index]:
            return self._bad(chunk.index)
        if r.accept(chunk.index, chunk.size, data):
            self.partial.write(chunk.index, data, r.chunk_size)
            self.unsaved += 1

    def _bad(self, index: int) -> None:
        """Ask again; the same chunk failing MAX_BAD_TRIES times means the source is bad."""
        self.bad_chunks += 1
        self._tries[index] = self._tries.get(index, 0) + 1
        if self._tries[index] >= MAX_BAD_TRIES:
            raise BundleRejected(
                Reason.TAMPERED,
                f"{self.target.path}: chunk {index} failed its check {MAX_BAD_TRIES} times; "
                "what is served does not match the signed target",
            )
        self.reassembly.reject(index)


@dataclass
class Installed:
    bundle: Bundle
    runtime: Runtime


class Updater:
    def __init__(
        self,
        verifier: Verifier,
        gate: CommandGate,
        downloader: Downloader,
        store: ModelStore,
        emit: Emit,
        activate: Callable[[Installed | None], None],
        threads: int,
        transfer_timeout: float,
        open_runtime: RuntimeLoader = load_runtime,
        set_shadow: Callable[[Shadow | None], None] = lambda _shadow: None,
    ) -> None:
        self.open_runtime = open_runtime  # a simulated fleet shares one session per model
        self.verifier = verifier
        self.gate = gate
        self.downloader = downloader
        self.store = store
        self.emit = emit
        self.activate = activate
        self.threads = threads
        self.transfer_timeout = transfer_timeout
        self.set_shadow = set_shadow

    def load(self, model: ModelRef) -> Installed:
        """An installed bundle, ready to serve (used at start-up and for rollback)."""
        bundle = read_bundle(self.store.read(model), None, self.verifier.max_bundle_bytes * 4)
        return Installed(bundle, self.open_runtime(bundle.card, bundle.model_bytes, self.threads))

    def serve_installed(self) -> None:
        """At start: the installed model passes the health gate again before it serves, so a
        crash between install and gate (or a model that broke on disk) cannot slip through."""
        current = self.store.record().current
        if current is None:
            return
        try:
            bundle = read_bundle(self.store.read(current), None, self.verifier.max_bundle_bytes * 4)
        except BadDataError as exc:
            log.error("installed model %s does not load (%s); rolling back", current, exc)
            self.rollback(None, f"installed model does not load: {exc}", failed=current)
            return
        runtime, reason = self._gated(bundle)
        if runtime is None:
            self.rollback(None, f"health gate failed at start: {reason}", failed=current)
            return
        self.activate(Installed(bundle, runtime))

    def admit(self, signed: SignedCommand, resumed: bool = False) -> bool:
        """Whether `signed` may be acted on (edge_agent/update/commands.py); a refusal goes on
        `events` with its reason, and the running model keeps serving."""
        try:
            self.gate.admit(signed, resumed)
        except BundleRejected as exc:
            self.refuse_command(signed.command.id, exc, signed.command)
            return False
        return True

    def refuse_command(self, what: str, exc: BadDataError, cmd: Command | None = None) -> None:
        reason = str(exc) if isinstance(exc, BundleRejected) else f"{Reason.BAD_MESSAGE}: {exc}"
        log.warning("refused command %s: %s", what, reason)
        self.emit("rejected", cmd.model if cmd else None, reason, cmd.rollout if cmd else None)

    def handle(self, cmd: Command) -> None:
        if cmd.kind == "deploy":
            self.deploy(cmd)
        elif cmd.kind == "rollback":
            self.undo(cmd)
        elif cmd.kind == "shadow":
            self.shadow(cmd)
        elif cmd.kind == "shadow-stop":
            self.set_shadow(None)

    def undo(self, cmd: Command) -> None:
        """The hub rolls back `cmd.rollout`: back to the model this device ran before that
        rollout. A device that already ran the rollout's model (it answered "already running")
        keeps it: the rollout installed nothing here, so there is nothing to undo."""
        record = self.store.record()
        current = record.current
        if cmd.model is not None and cmd.model != current:  # already gone: one step only
            log.info("rollback of %s ignored: this device runs %s", cmd.model, current)
            return
        if cmd.rollout is not None and current is not None and record.rollout != cmd.rollout:
            source = f" (installed by rollout {record.rollout})" if record.rollout else ""
            reason = (
                f"requested by the hub; kept {current}, which this device ran before rollout "
                f"{cmd.rollout}{source}: the rollout installed nothing here"
            )
            self.emit("rolled-back", current, reason, cmd.rollout)
            return
        previous = record.previous
        older = (
            previous is not None
            and current is not None
            and previous.name == current.name
            and previous.version < current.version
        )
        try:
            if older and previous is not None and not self.verifier.rollback_target(previous):
                raise BundleRejected(
                    Reason.DOWNGRADE,
                    f"{previous} is not signed as a rollback target; kept {current}",
                )
        except BundleRejected as exc:
            self.refuse_command(cmd.id, exc, cmd)
            return
        self.rollback(cmd.rollout, "requested by the hub")

    def deploy(self, cmd: Command) -> None:
        assert cmd.model is not None  # checked by Command
        running = self.store.record().current
        if running == cmd.model:
            self.emit("healthy", cmd.model, "already running", cmd.rollout)
            return
        self.set_shadow(None)  # the candidate is either this model now, or beside the point
        fetched = self._fetch_verified(cmd, running)
        if fetched is None:
            return
        bundle, data = fetched
        self.store.install(cmd.model, data, cmd.rollout)
        self.emit("installed", cmd.model, "", cmd.rollout)
        self._gate(bundle, cmd.rollout)

    def shadow(self, cmd: Command) -> None:
        """Verify the candidate like a deploy, gate it, then run it beside the serving model
        (in memory only: nothing is installed and nothing acts on its outputs)."""
        assert cmd.model is not None  # checked by Command
        fetched = self._fetch_verified(cmd, self.store.record().current)
        if fetched is None:
            return
        bundle, _ = fetched
        runtime, reason = self._gated(bundle)
        if runtime is None:
            self.emit("rejected", cmd.model, f"{Reason.UNHEALTHY}: {reason}", cmd.rollout)
            return
        card = bundle.card
        self.set_shadow(
            Shadow(cmd.model, runtime, card.task, cmd.rows, cmd.rollout, card.input, card.anomaly)
        )
        self.emit("shadowing", cmd.model, f"report every {cmd.rows} rows", cmd.rollout)

    def _fetch_verified(
        self, cmd: Command, running: ModelRef | None
    ) -> tuple[Bundle, bytes] | None:
        """offered -> downloading -> verified, or rejected (None) with its reason."""
        assert cmd.model is not None and cmd.target is not None  # checked by Command
        model = cmd.model
        self.emit("offered", model, "", cmd.rollout)
        try:  # the command's TUF version arrived: its gate waited for it
            target = self.verifier.lookup(cmd.target, model, running)
            how = "encrypted for this device" if cmd.encrypt else "signed"
            data, summary, why = self._by_delta(cmd, target, running, how)
            if data is None:
                not_used = f" (the delta from {why})" if why else ""
                self.emit(
                    "downloading", model, f"{target.length} bytes, {how}{not_used}", cmd.rollout
                )
                data, summary = self._download(target, cmd.encrypt)
            bundle = read_bundle(data, target.card_sha256, self.verifier.max_bundle_bytes * 4)
            if bundle.card.model != model:
                raise BundleRejected(
                    Reason.MISMATCH, f"card says {bundle.card.model}, signed target says {model}"
                )
            self.emit("verified", model, summary, cmd.rollout)
        except (BundleRejected, MessageError) as exc:
            log.warning("rejected %s: %s", model, exc)
            if isinstance(exc, BundleRejected):
                self.emit("rejected", model, f"{exc.reason}: {exc.detail}", cmd.rollout)
            else:
                self.emit("rejected", model, f"{Reason.BAD_MESSAGE}: {exc}", cmd.rollout)
            return None
        return bundle, data

    def _download(self, target: VerifiedTarget, encrypt: bool) -> tuple[bytes, str]:
        """`target`'s bytes, checked against its signed length and hashes; and how they came."""
        fetched = self.downloader.fetch(target, self.transfer_timeout, encrypt)
        try:
            self.verifier.check(target, fetched.data)
        finally:
            self.downloader.discard(target)  # whatever the verdict, never resume these bytes
        return fetched.data, fetched.summary()

    def _by_delta(
        self, cmd: Command, target: VerifiedTarget, running: ModelRef | None, how: str
    ) -> tuple[bytes | None, str, str]:
        """`target`'s bytes rebuilt from the bundle this device holds by the delta `cmd` names,
        checked against `target`'s signed length and hashes exactly as a download of it would
        be; or None and why the delta was not used ("" when the command named none), for the
        caller to fetch the full target."""
        ref = cmd.delta
        if ref is None:
            return None, "", ""
        try:
            if running != ref.base:  # the hub's registry had an older report than the truth
                raise BundleRejected(
                    Reason.MISMATCH, f"it starts from {ref.base}; this device runs {running}"
                )
            delta, base_sha256 = self.verifier.lookup_delta(ref, target)
            try:
                base = self.store.read(ref.base)
            except OSError as exc:
                raise BundleRejected(
                    Reason.MISMATCH, f"the bundle of {ref.base} cannot be read ({exc})"
                ) from exc
            if sha256_hex(base) != base_sha256:
                raise BundleRejected(
                    Reason.MISMATCH,
                    f"the bundle of {ref.base} on this device is not the one it starts from",
                )
            self.emit(
                "downloading",
                target.model,
                f"{delta.length} bytes of delta from {ref.base} for the {target.length}-byte "
                f"bundle, {how}",
                cmd.rollout,
            )
            patch, summary = self._download(delta, cmd.encrypt)
            from edge_agent.update.delta import apply_delta  # zstandard: loaded for updates only

            data = apply_delta(base, patch, target.length)
            self.verifier.check(target, data)  # as if the full target had been downloaded
        except BundleRejected as exc:
            log.warning("delta %s not used for %s: %s", ref.target, target.model, exc)
            return None, "", f"{ref.base} was not used: {exc}"
        return data, f"{summary}; rebuilt from {ref.base} by a {delta.length}-byte delta", ""

    def _gated(self, bundle: Bundle) -> tuple[Runtime | None, str]:
        """The bundle's runtime, loaded, warmed up and through the health gate, with what the
        gate measured; or None and why it failed."""
        try:
            runtime = self.open_runtime(bundle.card, bundle.model_bytes, self.threads)
        except BundleRejected as exc:
            return None, str(exc)
        result = check_health(bundle.card, runtime)
        if not result.ok:
            return None, result.reason
        return runtime, (
            f"agreement {result.agreement:.2f}, p50 {result.p50_latency_ms:.2f} ms, "
            f"error rate {result.error_rate:.2f}"
        )

    def _gate(self, bundle: Bundle, rollout: str | None) -> None:
        model = bundle.card.model
        runtime, reason = self._gated(bundle)
        if runtime is None:
            self.rollback(rollout, f"health gate failed: {reason}", failed=model)
            return
        self.activate(Installed(bundle, runtime))
        self.emit("healthy", model, reason, rollout)

    def rollback(self, rollout: str | None, reason: str, failed: ModelRef | None = None) -> None:
        """Back to the previous model; with none left the device serves nothing, says so."""
        before = self.store.record()
        record = self.store.rollback()
        self.activate(self.load(record.current) if record.current else None)
        if record.current is None:
            reason += "; no previous model, the device has none now"
        self.emit("rolled-back", failed or before.current, reason, rollout)
