"""The device daemon: wires config, MQTT session, updater, pipeline, buffer and sources.

Threads: the MQTT session's network thread (routes messages, never blocks), one thread per input
source, the updater (one command at a time), the sender (drains the buffer:
edge_agent.uplink.delivery), and the main loop (micro-batches sensor lines, closes telemetry
windows, refreshes the status).
Each runs under a guard (edge_agent.guard): an exception is logged once and the thread goes on.

A full or read-only disk stops nothing but the keeping: the agent infers and publishes its
status as ever, counts the records it cannot keep, says what is wrong in its status, and keeps
them again when the disk lets it (edge_agent.system.storage_health). Records are kept only under a
boot counter that is persisted: the hub drops a repeated (boot, seq), so a boot used twice
would lose the second one's records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent import __version__, native
from edge_agent.errors import BadDataError, ConfigError, MessageError, StorageError
from edge_agent.guard import Failures, run_guarded
from edge_agent.inference.pipeline import ActiveModel, Pipeline
from edge_agent.inference.runtime import load_runtime
from edge_agent.protocol.commands import SignedCommand, decode_signed_command
from edge_agent.protocol.inputs import InputState
from edge_agent.protocol.messages import (
    Command,
    ModelRef,
    Status,
    encode,
)
from edge_agent.protocol.records import (
    DeviceEvent,
    DeviceStats,
    Labels,
    ShadowReport,
    TelemetryWindow,
    WindowInputs,
)
from edge_agent.protocol.topics import Topics
from edge_agent.sources.backlog import Backlog
from edge_agent.system.fsutil import DISK_ERRNOS, atomic_write, storage_error
from edge_agent.system.resources import ResourceMeter
from edge_agent.system.storage_health import StorageHealth
from edge_agent.uplink.sampling import RawSampler

# The uplink (MQTT session, buffer, sender), the update side (store, TUF check, transfer) and
# the sources are imported where the agent builds them, not with this module: a process that
# only serves a model (and edge-agent's other commands) loads none of them.
if TYPE_CHECKING:
    from edge_agent.inference.results import ResultPublisher
    from edge_agent.inference.runtime import RuntimeLoader
    from edge_agent.inference.shadow import Shadow
    from edge_agent.mqtt.session import MqttSession
    from edge_agent.settings import AgentSettings
    from edge_agent.sources.base import Source
    from edge_agent.system.identity import DeviceIdentity
    from edge_agent.update.mirror import TufMirror
    from edge_agent.update.store import ModelStore
    from edge_agent.update.updater import Downloader, Installed, Updater
    from edge_agent.update.verify import CheckOpener, Verifier
    from edge_agent.uplink.buffer import Buffer
    from edge_agent.uplink.delivery import Sender

log = logging.getLogger(__name__)
IDLE_WAIT_S = 5.0  # the longest the idle main loop (a line, a due window or status, or a stop
# wakes it sooner) and the idle updater (a command or shutdown) sleep: bounds a stop whose
# wake-up a signal handler could not deliver


class _Stop(threading.Event):
    """The agent's stop event: setting it also wakes the main loop where it waits for lines,
    so a stop is heard at once although the loop does not poll."""

    _lines: Backlog | None = None

    def wakes(self, lines: Backlog) -> None:
        self._lines = lines

    def set(self) -> None:
        super().set()
        if self._lines is not None:
            self._lines.wake()


def last_boot(state_dir: Path) -> int:
    """The boot counter as persisted (0 before the first boot); StorageError if unreadable."""
    path = state_dir / "boot"
    try:
        return int(path.read_bytes())
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise storage_error(exc, path) from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: expected a boot counter, found garbage") from exc


def next_boot(state_dir: Path) -> int:
    """The boot counter, incremented and persisted before anything is recorded under it.
    StorageError when it cannot be persisted: then nothing may be recorded under it."""
    boot = last_boot(state_dir) + 1
    path = state_dir / "boot"
    try:
        atomic_write(path, str(boot).encode())
    except OSError as exc:
        raise storage_error(exc, path) from exc
    return boot


class Agent:
    def __init__(
        self,
        cfg: AgentSettings,
        open_runtime: RuntimeLoader = load_runtime,
        open_check: CheckOpener | None = None,
    ) -> None:
        """`open_check` opens the TUF check of an update cycle: by default a process of its
        own (edge_agent.update.verify.CheckProcess)."""
        self.cfg = cfg
        self.topics = Topics(cfg.broker.topic_prefix)
        state = cfg.device.state_dir
        self.health = StorageHealth()
        self._storage_lock = threading.Lock()
        try:
            state.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            err = storage_error(exc, state)
            if err.reason == "write-failed":  # not a full or read-only disk: a wrong path
                raise ConfigError(
                    f"device.state_dir {state}: expected a folder the agent can write, "
                    f"got {exc.strerror}"
                ) from exc
            self._storage_failed("state folder", err)
        # Until the boot counter is persisted nothing is kept, and the status names the boot
        # this one will be (or 0 when even reading the counter fails).
        self.boot = 0
        self._boot_persisted = False
        with contextlib.suppress(StorageError):
            self.boot = last_boot(state) + 1
        self.stop_event = _Stop()
        self._status_model: ModelRef | None = None  # the model the last status named
        self.buffer, self.session, self.sender = self._build_uplink()
        self.results = self._build_results()
        self.resources = ResourceMeter(time.monotonic())
        self.pipeline = Pipeline(
            on_drift=lambda r: self.keep("drift", r),
            on_window=self._window,
            on_result=self.results,
            on_shadow_report=self._shadow_report,
            window_rows=cfg.telemetry.window_rows,
            keep_predictions=cfg.telemetry.predictions,
        )
        rate = cfg.telemetry.raw_sample_rate
        if rate > 0:  # off by default: raw inputs may be personal data
            self.pipeline.sampler = RawSampler(rate, self._raw_sample)
        self.store, self.mirror, self.verifier, self.downloader, self.updater = (
            self._build_update_side(open_runtime, open_check)
        )
        self.lines = Backlog(cfg.pipeline.queue_max, cfg.pipeline.queue_max_bytes)
        self.stop_event.wakes(self.lines)
        # (command, resumed); None is shutdown's wake-up: the idle updater waits for one or the
        # other instead of polling
        self.commands: queue.Queue[tuple[SignedCommand, bool] | None] = queue.Queue()
        self.sources: list[Source] = []
        self._quiet: set[str] = set()  # inputs flagged "no input", to log each change once
        self.bad_messages = 0
        self._updater_thread: threading.Thread | None = None
        self._sender_thread: threading.Thread | None = None
        self._started = False
        self._storage_ready()

    def _build_uplink(self) -> tuple[Buffer, MqttSession, Sender]:
        """The telemetry buffer (opened by _storage_ready, under the persisted boot), the MQTT
        session to the hub, and the sender that drains the one into the other."""
        from edge_agent.mqtt.session import BrokerAddress, MqttSession
        from edge_agent.uplink.buffer import Buffer
        from edge_agent.uplink.delivery import Sender

        cfg = self.cfg
        buffer = Buffer(
            cfg.device.state_dir / "buffer",
            None,
            cfg.buffer.max_rows,
            cfg.buffer.max_bytes,
            cfg.buffer.caps.by_kind(),
            cfg.buffer.group_rows,
            cfg.buffer.group_window_s,
        )
        session = MqttSession(
            cfg.device.id,
            BrokerAddress(
                cfg.broker.host, cfg.broker.port, cfg.broker.username, cfg.broker.password
            ),
            will=(self._status_topic, encode(Status(cfg.device.id, online=False, boot=self.boot))),
            on_connect=self._on_connect,
            on_bad_message=self._bad_message,
            on_published=lambda mid: self.sender.on_published(mid),
            max_inflight=cfg.telemetry.max_inflight * 2,
        )
        sender = Sender(
            buffer,
            session,
            self.topics,
            cfg.device.id,
            cfg.telemetry.batch_size,
            cfg.telemetry.max_inflight,
            drain_rate=cfg.telemetry.drain_rate,
            confirm_timeout=cfg.telemetry.confirm_timeout_s,
        )
        return buffer, session, sender

    def _build_results(self) -> ResultPublisher | None:
        """The local results feed, where [results] enables it (its own MQTT link)."""
        if not self.cfg.results.enabled:
            return None
        from edge_agent.inference.results import ResultPublisher

        return ResultPublisher.from_settings(self.cfg.results, self.cfg.device.id, self._labels)

    def _build_update_side(
        self, open_runtime: RuntimeLoader, open_check: CheckOpener | None
    ) -> tuple[ModelStore, TufMirror, Verifier, Downloader, Updater]:
        """The model store, the TUF metadata the hub publishes and their check, the transfer
        of a bundle, and the updater that installs, gates and activates it."""
        from edge_agent.update.commands import CommandGate
        from edge_agent.update.mirror import TufMirror
        from edge_agent.update.store import ModelStore
        from edge_agent.update.updater import Downloader, Updater
        from edge_agent.update.verify import CheckProcess, Verifier

        cfg = self.cfg
        state = cfg.device.state_dir
        store = ModelStore(state / "models")
        mirror = TufMirror()
        verifier = Verifier(
            state / "tuf", mirror, cfg.limits.max_bundle_bytes, open_check or CheckProcess
        )
        downloader = Downloader(
            lambda payload: self.session.publish(
                self.topics.device(cfg.device.id, "xfer/req"), payload
            ),
            cfg.limits.transfer_window,
            state / "xfer",
            identity=self._identity,
            stop=self.stop_event,
        )
        updater = Updater(
            verifier,
            CommandGate(cfg.device.id, state / "command-counter.json", verifier, mirror),
            downloader,
            store,
            self._event,
            self._activate,
            cfg.runtime.threads,
            cfg.limits.transfer_timeout_s,
            open_runtime,
            set_shadow=self._set_shadow,
        )
        return store, mirror, verifier, downloader, updater

    @property
    def _status_topic(self) -> str:
        return self.topics.device(self.cfg.device.id, "status")

    # ---- keeping records ---------------------------------------------------------------------
    def _window(self, window: TelemetryWindow) -> None:
        """A closed telemetry window, with what the board costs, the inputs' condition, the
        drops since boot (so the hub stores what the cap cost) and, once records are kept
        again, what the disk cost."""
        record = dataclasses.replace(
            window,
            resources=self.resources.read(time.monotonic()),
            inputs=WindowInputs.of(self.inputs()) if self.sources else None,
            dropped=self.buffer.dropped() or None,
            storage=None if self.health.clean else self.health.condition(),
        )
        self.keep(record.KIND, record.to_body())

    def _labels(self, labels: Labels) -> None:
        """Ground truth taken in locally (edge_agent.uplink.labels): a record for the hub."""
        self.keep(labels.KIND, labels.to_body())

    def _raw_sample(self, body: dict[str, Any]) -> None:
        self.keep("telemetry", body)  # a record of its own (edge_agent.uplink.sampling)

    def keep(self, kind: str, body: dict[str, Any]) -> None:
        """Into the buffer; a record that cannot be kept is counted, per kind. While the
        buffer fails, one record a second tries it and the others are counted at once."""
        now = time.time()
        if self._storage_ready() and self.health.may_try("buffer", now):
            try:
                self.buffer.append(kind, body)
            except StorageError as exc:
                self._storage_failed("buffer", exc)
            except MessageError as exc:  # a body JSON cannot hold (NaN): kept, it would stall
                log.error("a %s record not kept: %s", kind, exc)  # the drain of all behind it
            else:
                self._storage_ok("buffer")
                self.sender.wake.set()
                return
        self.health.unkept(kind)

    def _storage_ready(self) -> bool:
        """Whether records can be kept: the boot counter persisted and the buffer open under
        it. Until then each call (at most one a second) tries what is missing. Inferred rows
        are numbered under the boot once it is persisted (edge_agent.protocol.ids)."""
        if self._boot_persisted and self.buffer.opened:
            return True
        persisted = self._boot_persisted
        try:
            return self._make_storage_ready()
        finally:
            if self._boot_persisted and not persisted:  # outside the lock: it may keep a record
                self.pipeline.number_rows(self.cfg.device.id, self.boot)

    def _make_storage_ready(self) -> bool:
        with self._storage_lock:
            now = time.time()
            if not self._boot_persisted:
                if not self.health.may_try("boot counter", now):
                    return False
                try:
                    self.boot = next_boot(self.cfg.device.state_dir)
                except StorageError as exc:
                    self._storage_failed("boot counter", exc)
                    return False
                self._boot_persisted = True
                self._storage_ok("boot counter")
                self._storage_ok("state folder")
            if not self.buffer.opened:
                if not self.health.may_try("buffer", now):
                    return False
                try:
                    self.buffer.open(self.boot)
                except StorageError as exc:
                    self._storage_failed("buffer", exc)
                    return False
                self._storage_ok("buffer")
                self._start_sender()
            return True

    def _storage_failed(self, place: str, exc: StorageError) -> None:
        line = self.health.failed(place, exc, time.time())
        if line:
            log.error(line)

    def _storage_ok(self, place: str) -> None:
        line = self.health.succeeded(place, time.time())
        if line:
            log.warning(line)

    def _event(
        self,
        event: str,
        model: ModelRef | None,
        reason: str,
        rollout: str | None,
        shadow: ShadowReport | None = None,
    ) -> None:
        log.info("%s %s %s", event, model, reason)
        record = DeviceEvent(event, model, reason, rollout, shadow)
        self.keep(record.KIND, record.to_body())
        if self._serving() != self._status_model:  # the hub sees a new model at once; the
            self._publish_status()  # rest of the status waits for the next heartbeat

    def _identity(self) -> DeviceIdentity | None:
        from edge_agent.system.identity import load_identity  # cryptography, only when needed

        return load_identity(self.cfg.device.state_dir)

    def _set_shadow(self, shadow: Shadow | None) -> None:
        self.pipeline.shadow = shadow

    def _shadow_report(self, shadow: Shadow, report: ShadowReport) -> None:
        reason = f"agreement {report.agreement:.3f} over {report.rows} rows"
        self._event("shadow-report", shadow.candidate, reason, shadow.rollout, shadow=report)

    def _activate(self, installed: Installed | None) -> None:
        if installed is None:
            self.pipeline.active = None
            return
        active = ActiveModel.build(
            installed.bundle.card,
            installed.runtime,
            self.cfg.drift.window,
            self.cfg.drift.warn_every,
            self.cfg.drift.alert_every,
            self.cfg.drift.window_s or None,
            self.cfg.drift.min_interval_s or None,
        )
        if self.cfg.drift.capture:  # off by default: raw inputs may be personal data
            active.monitor.capture = self.cfg.drift.capture_rows
        self.pipeline.active = active

    def _bad_message(self, topic: str, exc: BadDataError) -> None:
        self.bad_messages += 1
        log.warning("rejected message on %s: %s", topic, exc)

    def _on_command(self, _topic: str, payload: bytes) -> None:
        """Queued for the updater's thread, which checks it (its signature needs the TUF
        metadata, which arrives on this thread); one that does not even parse is refused now."""
        try:
            signed = decode_signed_command(payload)
        except BadDataError as exc:
            self.bad_messages += 1
            self.updater.refuse_command("on the cmd topic", exc)
            return
        self.commands.put((signed, False))

    def _keep_pending(self, signed: SignedCommand) -> None:
        """An accepted deploy is kept until handled: a restart mid-transfer resumes it."""
        try:
            atomic_write(self._pending_path, signed.to_bytes())
        except OSError as exc:  # handled all the same; only a restart would forget it
            log.warning("deploy %s: %s", signed.command.id, storage_error(exc, self._pending_path))

    @property
    def _pending_path(self) -> Path:
        return self.cfg.device.state_dir / "pending-command.json"

    def _handled(self, cmd: Command) -> None:
        """Forget the pending command if it is this one (a newer one may have replaced it)."""
        try:
            pending = decode_signed_command(self._pending_path.read_bytes()).command
        except (FileNotFoundError, BadDataError):
            return
        if pending.id == cmd.id:
            self._pending_path.unlink(missing_ok=True)

    def _resume_pending(self) -> None:
        try:
            self.commands.put((decode_signed_command(self._pending_path.read_bytes()), True))
        except FileNotFoundError:
            return
        except BadDataError as exc:
            log.warning("dropping an unreadable pending command: %s", exc)
            self._pending_path.unlink(missing_ok=True)

    def _on_tuf(self, topic: str, payload: bytes) -> None:
        self.mirror.put(topic.removeprefix(self.topics.tuf("")), payload)

    def _on_line(self, fmt: str, waits: bool) -> Any:
        """Where a source's lines go: into the backlog, or refused (counted) when it is full,
        unless the source can wait for room (sources.backlog)."""

        def put(raw: bytes) -> None:
            try:
                self.lines.put_nowait((fmt, raw))
            except queue.Full:
                self.pipeline.reject("queue-full")

        def wait(raw: bytes) -> bool:
            return self.lines.put_waiting((fmt, raw), self.stop_event)  # False: stopping

        return wait if waits else put

    # ---- status ----------------------------------------------------------------------------
    def inputs(self) -> list[InputState]:
        """Each source's condition now (edge_agent.protocol.inputs); the log says once when an
        input goes quiet past telemetry.no_input_s, and once when its lines come back."""
        limit = self.cfg.telemetry.no_input_s
        states = [InputState.of(s.name, s.stats(), limit) for s in self.sources]
        quiet = {s.name for s in states if s.no_input}
        for name in sorted(quiet - self._quiet):
            log.warning("input %s: no line for %g s or more", name, limit)
        for name in sorted(self._quiet - quiet):
            log.info("input %s: lines again", name)
        self._quiet = quiet
        return states

    def status(self) -> Status:
        running = self.pipeline.stats
        stats = DeviceStats(
            inferences=running.inferences,
            rejected=dict(running.rejected),
            latency_ms=running.latencies(),
            sent=dict(self.sender.sent),
            buffered=self.buffer.pending(),
            dropped=self.buffer.dropped(),
            bad_messages=self.bad_messages,
            storage=self.health.condition(),
            inputs=tuple(self.inputs()),
        )
        return Status(
            device=self.cfg.device.id,
            online=True,
            boot=self.boot,
            agent_version=__version__,
            profile=self.cfg.profile,
            model=self._serving(),
            stats=stats.to_body(),
            ts=time.time(),
        )

    def _on_connect(self) -> None:
        self._publish_status()
        self.sender.wake.set()  # what waited in the buffer goes now

    def _serving(self) -> ModelRef | None:
        active = self.pipeline.active
        return active.card.model if active else None

    def _publish_status(self) -> None:
        status = self.status()
        self._status_model = status.model
        self._write_status(status)
        if self.session.connected.is_set():
            self.session.publish(self._status_topic, encode(status), retain=True)

    def _write_status(self, status: Status) -> None:
        """status.json, what `edge-agent status` reads without asking the daemon. One that
        cannot be written is said in the published status (stats.storage). Replaced whole but
        not fsynced: it is rewritten at every heartbeat, model change and start, so a power
        cut costs nothing the next status does not say again (and `edge-agent status` says
        plainly when it finds the file unreadable)."""
        path = self.cfg.device.state_dir / "status.json"
        if not self.health.may_try("status file", time.time()):
            return
        try:
            atomic_write(path, json.dumps(status.to_json()).encode(), durable=False)
        except OSError as exc:
            self._storage_failed("status file", storage_error(exc, path))
        else:
            self._storage_ok("status file")

    # ---- running ---------------------------------------------------------------------------
    def start(self) -> None:
        if native.missing():  # setup.py could not compile them here: correct, only slower
            log.warning("running in Python, not C (not built): %s", ", ".join(native.missing()))
        self.updater.serve_installed()
        dev = self.cfg.device.id
        self.session.subscribe(self.topics.tuf_all, self._on_tuf)
        self.session.subscribe(self.topics.device(dev, "cmd"), self._on_command)
        self.session.subscribe(self.topics.device(dev, "xfer/chunk"), self.downloader.on_chunk)
        self._resume_pending()
        self.session.start()
        if self.results is not None:
            self.results.start()
        from edge_agent.sources.factory import input_from_config

        for spec in self.cfg.inputs:
            fmt, source = input_from_config(spec)
            source.start(self._on_line(fmt, source.waits))
            self.sources.append(source)
        self._updater_thread = threading.Thread(
            target=run_guarded, args=("updater", self._updater_loop, self.stop_event), daemon=True
        )
        self._updater_thread.start()
        with self._storage_lock:
            self._started = True
            if self.buffer.opened:
                self._start_sender()

    def _start_sender(self) -> None:
        """Once started and the buffer is open (under _storage_lock); an exception in the
        sender is logged and it goes on sending."""
        if not self._started or self._sender_thread is not None:
            return
        self._sender_thread = threading.Thread(
            target=run_guarded,
            args=("sender", lambda: self.sender.run(self.stop_event), self.stop_event),
            daemon=True,
        )
        self._sender_thread.start()

    def _updater_loop(self) -> None:
        from edge_agent.update.updater import TransferInterrupted

        while not self.stop_event.is_set():
            try:
                taken = self.commands.get(timeout=IDLE_WAIT_S)
            except queue.Empty:
                continue
            if taken is None:  # woken to stop
                continue
            signed, resumed = taken
            cmd = signed.command
            try:
                with self.verifier.cycle():  # one TUF refresh for the check and the lookup
                    if not self.updater.admit(signed, resumed):
                        self._handled(cmd)  # a refused command is never resumed
                        continue
                    if cmd.kind == "deploy" and not resumed:
                        self._keep_pending(signed)
                    self.updater.handle(cmd)
            except TransferInterrupted as exc:  # stopping: the command stays pending
                log.info("update %s interrupted: %s", cmd.id, exc)
                return
            except Exception as exc:  # the daemon outlives any single update
                self._event("rejected", cmd.model, self._update_failed(cmd, exc), cmd.rollout)
            self._handled(cmd)

    def _update_failed(self, cmd: Command, exc: Exception) -> str:
        """The reason a failed update gives the hub: what the disk said when it refused (full,
        read-only), else a pointer to the device log, where the traceback goes."""
        from edge_agent.update.verify import CheckFailed

        if isinstance(exc, CheckFailed):  # not the bundle's fault: the device says what failed
            log.error("update %s failed: %s", cmd.id, exc)
            return str(exc)
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            where = Path(os.fsdecode(exc.filename)) if exc.filename else self.cfg.device.state_dir
            reason = f"cannot write the state folder: {storage_error(exc, where)}"
            log.error("update %s failed: %s", cmd.id, reason)
            return reason
        log.error("update %s failed", cmd.id, exc_info=exc)
        return "internal error, see the device log"

    def run_forever(self) -> None:
        """Main loop until stop_event; then finish the batch, flush and say goodbye."""
        batch_max = self.cfg.pipeline.batch_max
        interval = self.cfg.telemetry.interval_s
        status_every = self.cfg.telemetry.status_interval_s
        next_window = next_status = time.monotonic()
        failures = Failures("main loop")
        while not self.stop_event.is_set():
            try:
                # idle, the loop sleeps until a line comes, the next window or status is due,
                # or the agent stops (stop_event wakes it): no polling between lines
                due = min(next_window, next_status) - time.monotonic()
                batch = self.lines.get_batch(batch_max, timeout=min(max(due, 0.0), IDLE_WAIT_S))
                if batch:
                    self.pipeline.process(batch)
                now = time.monotonic()
                if now >= next_window:
                    next_window = now + interval
                    self.pipeline.flush_window()
                if now >= next_status:
                    next_status = now + status_every
                    self._storage_ready()  # a disk that came back is noticed without records
                    self._publish_status()
            except Exception as exc:  # the guard: logged once, and the loop goes on
                failures.failed(exc)
                self.stop_event.wait(0.1)
        self.shutdown()

    def shutdown(self, drain_timeout: float = 5.0) -> None:
        self.stop_event.set()
        for source in self.sources:
            source.stop()
        if self._updater_thread is not None:  # a transfer in progress checkpoints what arrived
            self.commands.put(None)  # an idle updater hears the stop at once
            self._updater_thread.join(drain_timeout)
        leftover = []
        with contextlib.suppress(queue.Empty):
            while True:
                leftover.append(self.lines.get_nowait())
        if leftover:
            self.pipeline.process(leftover)
        self.pipeline.flush_window()
        if self.results is not None:
            self.results.stop()
        deadline = time.monotonic() + drain_timeout
        while not self.sender.idle() and time.monotonic() < deadline:
            self.sender.pump()
            self.sender.wake.wait(0.1)
            self.sender.wake.clear()
        self._publish_status()
        offline = Status(self.cfg.device.id, online=False, boot=self.boot, ts=time.time())
        self.session.stop(final=(self._status_topic, encode(offline)))
        self._write_status(dataclasses.replace(self.status(), online=False, ts=time.time()))
        self.buffer.close()
