"""The secure update path on the device: offered -> downloading -> verified -> installed ->
healthy, or rejected / rolled-back with a reason. Nothing is installed before it is verified,
and a model that fails its health gate after install is rolled back automatically.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.bundle import Bundle, read_bundle
from edge_agent.errors import BundleRejected, MessageError
from edge_agent.health import check_health
from edge_agent.model_store import ModelStore
from edge_agent.protocol.messages import (
    Command,
    ModelRef,
    XferRequest,
    decode_xfer_chunk,
    encode,
)
from edge_agent.protocol.transfer import Reassembly
from edge_agent.runtime import Runtime, load_runtime
from edge_agent.trust import TufMirror, VerifiedTarget, Verifier

log = logging.getLogger(__name__)

Emit = Callable[[str, ModelRef | None, str, str | None], None]  # event, model, reason, rollout


class Downloader:
    """Pulls the chunks of one target over MQTT: asks within a window, re-asks what is late."""

    def __init__(
        self,
        publish: Callable[[bytes], object],
        window: int,
        retry_after: float = 2.0,
    ) -> None:
        self._publish = publish
        self._window = window
        self._retry_after = retry_after
        self._current: Reassembly | None = None
        self._arrived = threading.Event()
        self._lock = threading.Lock()

    def on_chunk(self, _topic: str, payload: bytes) -> None:
        chunk = decode_xfer_chunk(payload)
        with self._lock:
            current = self._current
            if current is None or chunk.target != current.target:
                return  # a late chunk of an earlier transfer
            current.accept(chunk.index, chunk.size, chunk.data)
        self._arrived.set()

    def fetch(self, target: VerifiedTarget, timeout: float) -> bytes:
        reassembly = Reassembly(target.path, target.length)
        with self._lock:
            self._current = reassembly
        deadline = time.monotonic() + timeout
        try:
            while True:
                with self._lock:
                    if reassembly.complete:
                        return reassembly.assemble()
                    wanted = reassembly.to_request(
                        time.monotonic(), self._window, self._retry_after
                    )
                if wanted:
                    self._publish(encode(XferRequest(target.path, tuple(wanted))))
                if time.monotonic() > deadline:
                    raise BundleRejected(
                        "truncated",
                        f"{target.path}: {reassembly.received} of {reassembly.total} chunks "
                        f"arrived within {timeout:.0f}s",
                    )
                self._arrived.wait(0.5)
                self._arrived.clear()
        finally:
            with self._lock:
                self._current = None


@dataclass
class Installed:
    bundle: Bundle
    runtime: Runtime


class Updater:
    def __init__(
        self,
        verifier: Verifier,
        mirror: TufMirror,
        downloader: Downloader,
        store: ModelStore,
        emit: Emit,
        activate: Callable[[Installed | None], None],
        threads: int,
        transfer_timeout: float,
    ) -> None:
        self.verifier = verifier
        self.mirror = mirror
        self.downloader = downloader
        self.store = store
        self.emit = emit
        self.activate = activate
        self.threads = threads
        self.transfer_timeout = transfer_timeout

    def load(self, model: ModelRef) -> Installed:
        """An installed bundle, ready to serve (used at start-up and for rollback)."""
        bundle = read_bundle(self.store.read(model), None, self.verifier.max_bundle_bytes * 4)
        return Installed(bundle, load_runtime(bundle.card, bundle.model_bytes, self.threads))

    def handle(self, cmd: Command) -> None:
        if cmd.kind == "deploy":
            self.deploy(cmd)
        elif cmd.kind == "rollback":
            self.rollback(cmd.rollout, "requested by the hub")

    def deploy(self, cmd: Command) -> None:
        assert cmd.model is not None and cmd.target is not None  # checked by Command
        model = cmd.model
        running = self.store.record().current
        if running == model:
            self.emit("healthy", model, "already running", cmd.rollout)
            return
        self.emit("offered", model, "", cmd.rollout)
        try:
            if not self.mirror.wait_for_timestamp(cmd.tuf_version, timeout=30):
                raise BundleRejected(
                    "metadata-unavailable",
                    f"TUF timestamp version {cmd.tuf_version} did not arrive",
                )
            target = self.verifier.lookup(cmd.target, model, running)
            self.emit("downloading", model, f"{target.length} bytes", cmd.rollout)
            data = self.downloader.fetch(target, self.transfer_timeout)
            self.verifier.check(target, data)
            bundle = read_bundle(data, target.card_sha256, self.verifier.max_bundle_bytes * 4)
            if bundle.card.model != model:
                raise BundleRejected(
                    "mismatch", f"card says {bundle.card.model}, signed target says {model}"
                )
            self.emit("verified", model, "", cmd.rollout)
        except (BundleRejected, MessageError) as exc:
            log.warning("rejected %s: %s", model, exc)
            if isinstance(exc, BundleRejected):
                self.emit("rejected", model, f"{exc.reason}: {exc.detail}", cmd.rollout)
            else:
                self.emit("rejected", model, f"bad-message: {exc}", cmd.rollout)
            return
        self.store.install(model, data)
        self.emit("installed", model, "", cmd.rollout)
        self._gate(bundle, cmd.rollout)

    def _gate(self, bundle: Bundle, rollout: str | None) -> None:
        model = bundle.card.model
        try:
            runtime = load_runtime(bundle.card, bundle.model_bytes, self.threads)
            result = check_health(bundle.card, runtime)
            reason = result.reason
        except BundleRejected as exc:
            result, reason = None, str(exc)
        if result is not None and result.ok:
            self.activate(Installed(bundle, runtime))
            self.emit(
                "healthy",
                model,
                f"agreement {result.agreement:.2f}, p50 {result.p50_latency_ms:.2f} ms",
                rollout,
            )
            return
        self.rollback(rollout, f"health gate failed: {reason}", failed=model)

    def rollback(self, rollout: str | None, reason: str, failed: ModelRef | None = None) -> None:
        """Back to the previous model; with none left the device serves nothing, says so."""
        before = self.store.record()
        record = self.store.rollback()
        self.activate(self.load(record.current) if record.current else None)
        if record.current is None:
            reason += "; no previous model, the device has none now"
        self.emit("rolled-back", failed or before.current, reason, rollout)
