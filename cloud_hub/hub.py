"""The hub process: ingest, TUF publication, chunk transfer service and the rollout engine.

The MQTT session's thread only queues incoming messages; one loop stores them, serves transfer
requests, publishes TUF metadata when the repository changed, and steps the running rollouts
and experiments.

Exactly once, whatever the broker keeps or loses: after each transaction commits, the hub
confirms on dev/{id}/ack the (boot, seq) spans it committed, and only then does the device
forget those records (edge_agent.uplink.delivery); what stays unconfirmed the device sends again,
and
the store drops the repeat by (device, boot, seq). Device messages also arrive at QoS 1 on a
persistent session with manual acknowledgement, the PUBACK going out after the commit, so a hub
restart within what the broker queues costs no resend at all. With `share`, several hubs
subscribe to the device topics as one MQTT shared-subscription group and the broker splits the
messages between them; each on a clean session, so a worker that dies (SIGKILL: it cannot leave
the group) leaves it at once, and the messages it had not confirmed come again from their
devices.

Each record's body is decoded once here (edge_agent.protocol.records) before it is stored. One
that does not decode is not stored: it is counted as refused (`malformed`, in `edgehub
devices`), logged once per device and kind, and confirmed all the same, since sending it
again would not make it valid; the other records of its batch are stored as ever. So is one
the store cannot keep (a number JSON reads as infinite, 1e999, in a field the checks do not
know: no JSON column holds it), found by the store before its statement runs.

Ground truth a device sends on dev/{id}/labels is stored like its other records and joined to
the predictions it names in the same transaction (cloud_hub.quality.ledger); `quality` (a
cloud_hub.quality.watch.QualityWatch) joins late labels and checks the accuracy floors between
messages.

Every command goes out signed with the hub's command key (cloud_hub/signing/commands.py), with
the next counter of its device; a deploy or a shadow grants the device its target, and the hub
serves chunks only of a target granted to the asking device (encrypted when the command said
so), within the device's transfer rate.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer

from cloud_hub import jsoncodec
from cloud_hub.cluster import LEADER_TIMEOUT_S
from cloud_hub.cluster.leader import Follower, Leadership, LostLead, Sole, leadership
from cloud_hub.drift.source import PublishedCards
from cloud_hub.experiments.operations import step_all as step_experiments
from cloud_hub.experiments.samples import Outcomes, outcomes_from_labels
from cloud_hub.ingest_limits import MALFORMED, UNCOMMANDED, DeviceGuard, Limits, refusal_line
from cloud_hub.quality.metrics import Floors
from cloud_hub.quality.watch import QualityWatch
from cloud_hub.retrain.runner import Hub as RetrainHub
from cloud_hub.retrain.runner import Ticker
from cloud_hub.retrain.triggers import StoreLabels
from cloud_hub.rollout import engine as ro
from cloud_hub.rollout.gates import Metrics, Position
from cloud_hub.rollout.operations import fleet_facts, measure_stored, rollout_reports
from cloud_hub.signing.commands import COMMAND_TTL, counter_floor, sign_command
from cloud_hub.signing.deltas import Deltas
from cloud_hub.signing.tuf_repo import TufRepository
from cloud_hub.store.database import Ingest, Issue, Store, dumps
from cloud_hub.store.errors import RecordKey, StoreError, Unstorable
from cloud_hub.store.url import store_url as home_store
from edge_agent.errors import BadDataError, MessageError, TransportError
from edge_agent.mqtt.session import Ack, BrokerAddress, MqttSession
from edge_agent.protocol.messages import (
    SHADOW_ROWS,
    Batch,
    Command,
    Confirm,
    DeltaRef,
    ModelRef,
    Record,
    Status,
    XferChunk,
    decode_batch,
    decode_command,
    decode_xfer_request,
    encode,
    spans_of,
)
from edge_agent.protocol.records import decode, decode_checked_status
from edge_agent.protocol.topics import Topics
from edge_agent.protocol.transfer import CHUNK_SIZE, chunk_bounds, chunk_count
from edge_agent.update.crypto import new_transfer_key, seal_chunk, wrap_key

log = logging.getLogger(__name__)

MAX_CHUNKS_PER_REQUEST = 64
INGEST_BATCH = 500  # messages stored in one transaction, then acknowledged
# confirmations (QoS 1) on their way to the broker at once: none held back (0). (paho-mqtt, the
# client before edge_agent.mqtt.client, walked its whole message list on every PUBACK when a
# window held some back: at thousands of confirmations a second the queue grew to its 65,535
# ids and confirmations were refused.) Unacknowledged, they are bounded by the 65,535 ids.
CONFIRMS_IN_FLIGHT = 0
TUF_STATE = "tuf"  # hub_state: the timestamp version the leader last published
UNCONFIRMED_LOG_S = 60.0
TICK_S = 0.25
# how long the first message of a transaction waits for others to share it: a transaction's
# own cost (begin, the device stamps, commit) is most of a record's at a few per transaction,
# as at 2,000 devices reporting once a second, where this cut the hub's CPU from 0.53 to 0.32
# of a core on PostgreSQL and from 0.49 to 0.32 on SQLite (bench/hub_capacity_bench.py); at
# 5,000 the transactions fill up anyway. Each confirmation comes this much later at most.
GATHER_S = 0.02
_XFER_REQ = "/xfer/req"
PRUNE_EVERY_S = 60.0
EXPERIMENTS_EVERY_S = 1.0  # experiments read their cohorts' records: not every tick


def _what(item: Ingest) -> str:
    if isinstance(item, Status):
        return f"the status of {item.device}"
    kind, batch = item
    return f"{len(batch.records)} {kind} records of {batch.device}"


Refused = tuple[str, str, Record, MessageError]  # kind, device, the record, why


def check_bodies(kind: str, batch: Batch) -> tuple[Batch, list[Refused]]:
    """The batch's records whose bodies decode, and the others with why they do not."""
    good: list[Record] = []
    bad: list[Refused] = []
    for r in batch.records:
        try:
            decode(kind, r.body, f"{kind} record of {batch.device} ({r.boot}, {r.seq})")
        except MessageError as exc:
            bad.append((kind, batch.device, r, exc))
        else:
            good.append(r)
    return Batch(batch.device, tuple(good)), bad


def without_records(
    items: Sequence[Ingest], unstorable: dict[RecordKey, str]
) -> tuple[list[Ingest], list[Refused]]:
    """`items` without the `unstorable` records (each key's why, from the store), and those
    records as refused; a batch left with no record is left out."""
    kept: list[Ingest] = []
    bad: list[Refused] = []
    for item in items:
        if isinstance(item, Status):
            kept.append(item)
            continue
        kind, batch = item
        good = []
        for r in batch.records:
            why = unstorable.get((kind, batch.device, r.boot, r.seq))
            if why is None:
                good.append(r)
            else:
                where = f"{kind} record of {batch.device} ({r.boot}, {r.seq})"
                bad.append((kind, batch.device, r, MessageError(f"{where}: {why}")))
        if good:
            kept.append((kind, Batch(batch.device, tuple(good))))
    return kept, bad


def _root_number(name: str) -> int:
    return int(name.removeprefix("root/").removesuffix(".json"))


CONNECT_WAIT_S = 30.0  # how long run() waits for its first connection before it goes on


class Hub:
    def __init__(
        self,
        home: Path,
        broker: BrokerAddress,
        prefix: str = "edgefleet",
        store_url: str | None = None,
        client_id: str = "edgehub",
        share: str | None = None,
        retention_days: float | None = None,
        clock: Callable[[], float] = time.time,
        limits: Limits | None = None,
        outcomes: Outcomes | None = None,
        accuracy_floors: Floors | None = None,
        lead: bool = True,
        leader_timeout_s: float = LEADER_TIMEOUT_S,
    ) -> None:
        """`lead=False`: a worker that only ingests, serves transfers and the dashboard, and
        never leads (it needs no signing key); else the worker competes for the lead
        (cloud_hub.cluster.leader) and, while it holds it, runs what changes the fleet."""
        self.home = home
        self.clock = clock  # the rollouts' and experiments' `now`; tests drive it
        self._next_experiments = 0.0
        self.topics = Topics(prefix)
        self.repo = TufRepository(home)
        self.deltas = Deltas(self.repo)
        self.store = Store(store_url or home_store(home))
        self.leadership: Leadership = (
            leadership(self.store.engine, home, share is not None, leader_timeout_s)
            if lead
            else Follower()
        )
        self.leading: bool | None = None  # not asked yet
        # experiments on accuracy: the labels joined to predictions in the store, unless given
        self.outcomes = outcomes or outcomes_from_labels(self.store.joined_labels)
        self.rejected: Counter[str] = Counter()
        self.stored: Counter[str] = Counter()  # new records this process stored, per kind
        self.handled = threading.Condition()  # notified after each message; for observers
        self.incoming: queue.Queue[tuple[str, bytes, Ack]] = queue.Queue()
        self.ready = threading.Event()
        self.retention_s = retention_days * 86400 if retention_days else None
        self.guard = DeviceGuard(limits or Limits())
        self._refusing: set[tuple[str, str]] = set()  # (device, reason) said in the log
        self._next_prune = 0.0
        self.quality = QualityWatch(self.store, PublishedCards(self.repo), accuracy_floors)
        self.unconfirmed = 0  # confirmations the MQTT client refused (its queue was full)
        self._warn_unconfirmed_at = 0.0  # when the log may say so again
        # A worker of a share group holds no session while it is away: the broker would go on
        # handing a persistent one its share of the fleet's messages, queued for a worker that
        # was killed and may never come back, each to be sent again by its device
        self.session = MqttSession(
            client_id,
            broker,
            persistent=share is None,
            manual_ack=True,
            max_inflight=CONFIRMS_IN_FLIGHT,
        )
        for kind in ("status", "telemetry", "drift", "events", "labels", "xfer/req"):
            self.session.subscribe_acked(self.topics.any_device(kind), self._queue, share=share)
        # what answers a device's transfer request (xfer/req): `serve_chunks`; a test wraps it
        # to withhold chunks, or to put something on the broker while a device waits for them
        self.on_xfer_request: Callable[[str, bytes], None] = self.serve_chunks
        self._targets: dict[str, bytes] = {}
        self._transfer_keys: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        self._published_ts = 0
        self._said_behind = False  # the log said this worker's repository is behind
        self._next_timestamp_check = 0.0
        self._command_key: Signer | None = None
        self.retrain = Ticker(RetrainHub(home, self.store, StoreLabels(self.store)))

    def _queue(self, topic: str, payload: bytes, ack: Ack) -> None:
        """The MQTT session's thread: a device past its message rate is refused here, before its
        message costs a decode or a place in the queue (nothing of it is confirmed: it sends
        again)."""
        try:
            device, _kind = self.topics.parse_device_topic(topic)
        except MessageError:
            pass  # rejected, counted and logged when handled
        else:
            if not self.guard.admit(device, time.monotonic()):
                ack()
                return
        self.incoming.put((topic, payload, ack))

    # ---- the loop ---------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        if self.repo.initialised and not isinstance(self.leadership, Follower):
            self._command_signer()  # a key that does not open fails the start, not a rollout
        self.session.start()
        connect_by = time.monotonic() + CONNECT_WAIT_S
        while not stop.is_set() and time.monotonic() < connect_by:  # a stop is heard at once
            if self.session.wait_connected(0.1):
                break
        self.ready.set()
        next_tick = 0.0
        while not stop.is_set():
            taken = self._take(INGEST_BATCH)
            if taken:
                self.handle_all([(topic, payload) for topic, payload, _ in taken])
                for _, _, ack in taken:
                    ack()  # committed: now the broker may forget them
            if time.monotonic() >= next_tick:
                self.tick()
                next_tick = time.monotonic() + TICK_S
        self.session.stop()
        self.leadership.close()

    def _take(self, limit: int) -> list[tuple[str, bytes, Ack]]:
        """At most `limit` messages: waits up to a tick for the first, then up to GATHER_S for
        more to share its transaction, but not once a transfer request is among them (a
        device waits for its chunks)."""
        try:
            taken = [self.incoming.get(timeout=TICK_S)]
        except queue.Empty:
            return []
        gather_by = time.monotonic() + GATHER_S
        with contextlib.suppress(queue.Empty):
            while len(taken) < limit:
                if taken[-1][0].endswith(_XFER_REQ):
                    gather_by = 0.0  # from here on only what has queued
                wait = gather_by - time.monotonic()
                taken.append(
                    self.incoming.get(timeout=wait) if wait > 0 else self.incoming.get_nowait()
                )
        return taken

    def handle(self, topic: str, payload: bytes) -> None:
        self.handle_all([(topic, payload)])

    def handle_all(self, messages: list[tuple[str, bytes]]) -> None:
        """Serve transfer requests at once; store every status and record batch among
        `messages` in one transaction (one commit, not one per message)."""
        items: list[Ingest] = []
        refused: list[Refused] = []
        for topic, payload in messages:
            try:
                item = self._decode(topic, payload)
                if item is not None and not isinstance(item, Status):
                    kind, batch = item
                    valid, bad = check_bodies(kind, batch)
                    refused.extend(bad)
                    item = (kind, valid) if valid.records or not bad else None
                if item is not None and self._has_room(item):
                    items.append(item)
            except BadDataError as exc:
                self._reject(exc, f"rejected message on {topic}")
            except (OSError, TransportError, StoreError) as exc:  # a transfer, or the quota
                self._reject(exc, f"could not handle the message on {topic}")
        committed = self._store(items, refused) if items else []
        self._confirm(committed, self._refuse_bodies(refused))
        with self.handled:
            self.handled.notify_all()

    def _decode(self, topic: str, payload: bytes) -> Ingest | None:
        """What to store of one message (None for a transfer request, served here)."""
        device, kind = self.topics.parse_device_topic(topic)
        if kind == "status":
            status = decode_checked_status(payload)
            self._same_device(device, status.device, kind)
            return status
        if kind == "xfer/req":
            self.on_xfer_request(device, payload)
            return None
        batch = decode_batch(payload, kind, jsoncodec.loads)
        self._same_device(device, batch.device, kind)
        return kind, batch

    def _has_room(self, item: Ingest) -> bool:
        """Within its device's storage quota (a status always is)?"""
        if isinstance(item, Status):
            return True
        batch = item[1]
        return self.guard.room(batch.device, len(batch.records), self.store.held)

    def _store(self, items: list[Ingest], refused: list[Refused]) -> list[Ingest]:
        """Store `items` in one transaction; returns those committed (on a failure, each is
        tried alone, so only what cannot be stored is left out, counted and logged). Records
        the store cannot keep go to `refused`, like bodies that do not decode, and the rest
        are stored."""
        try:
            new = self.store.ingest(items)
        except Unstorable as exc:  # found before any statement: nothing of `items` was written
            kept, bad = without_records(items, exc.records)
            refused.extend(bad)
            return self._store(kept, refused) if kept else []
        except (OSError, TransportError, StoreError) as exc:  # disk or database trouble
            if len(items) > 1:
                return [done for item in items for done in self._store([item], refused)]
            self._reject(exc, f"could not store {_what(items[0])}")
            return []
        with self.handled:
            self.stored.update(new)
        return items

    def _refuse_bodies(self, refused: list[Refused]) -> list[tuple[str, Record]]:
        """Count the records refused for their bodies (`malformed`: they do not decode, or the
        store cannot keep them) and log the first of each device and kind; returns them to
        confirm (none if the count could not be stored: then the device sends them again and
        they are counted then)."""
        if not refused:
            return []
        counts: dict[str, Counter[str]] = {}
        for _kind, device, _record, _exc in refused:
            counts.setdefault(device, Counter())[MALFORMED] += 1
        try:
            self.store.add_refusals(counts, time.time())
        except (OSError, TransportError, StoreError) as exc:
            self._reject(exc, f"could not count {len(refused)} malformed records")
            return []
        for kind, device, _record, why in refused:
            if (device, f"{MALFORMED} {kind}") not in self._refusing:
                self._refusing.add((device, f"{MALFORMED} {kind}"))
                log.warning(
                    "refused a record of %s on %s (confirmed, not stored; "
                    "further ones are only counted in `edgehub devices`): %s",
                    device,
                    kind,
                    why,
                )
        return [(device, record) for _kind, device, record, _exc in refused]

    def _confirm(self, committed: list[Ingest], refused: Sequence[tuple[str, Record]] = ()) -> None:
        """Tell each device which of its records are committed (new or repeated), or refused
        for good: only now may it forget them. A confirmation that gets lost costs a resend,
        which is stored (or refused) once."""
        records: dict[str, list[Record]] = {}
        for device, record in refused:
            records.setdefault(device, []).append(record)
        for item in committed:
            if not isinstance(item, Status):
                records.setdefault(item[1].device, []).extend(item[1].records)
        for device, recs in records.items():
            confirm = Confirm(device, spans_of(recs))
            try:
                payload = encode(confirm, jsoncodec.dumps)  # one a device: a third of json's time
                self.session.publish(self.topics.device(device, "ack"), payload)
            except TransportError as exc:  # the client's queue is full: a hub slower than its
                # fleet; the device sends those records again, and they are stored once
                self.unconfirmed += 1
                now = time.monotonic()
                if now >= self._warn_unconfirmed_at:  # at most once a minute
                    self._warn_unconfirmed_at = now + UNCONFIRMED_LOG_S
                    log.warning(
                        "confirmations not sent: %d since start (%s); devices send those "
                        "records again",
                        self.unconfirmed,
                        exc,
                    )

    def _reject(self, exc: Exception, what: str) -> None:
        """Count and log; the loop goes on (a bad message or a failing disk must not end it)."""
        with self.handled:
            self.rejected[type(exc).__name__] += 1
        log.warning("%s: %s: %s", what, type(exc).__name__, exc)

    @staticmethod
    def _same_device(topic_device: str, claimed: str, kind: str) -> None:
        if topic_device != claimed:
            raise MessageError(
                f"{kind}: published on {topic_device}'s topic but claims device {claimed!r}"
            )

    def tick(self, now: float | None = None) -> None:
        """What runs besides ingest: every worker notes refusals; the leader alone prunes,
        publishes TUF metadata, sends queued commands and steps rollouts, experiments, the
        quality watch and retraining policies."""
        now = time.time() if now is None else now
        try:
            self._note_refusals(now)
            if self._leads():
                with self.leadership.fence():  # a lead taken meanwhile: its writes are refused
                    self._lead(now)
        except LostLead as exc:
            log.warning("lost the lead: %s", exc)
            self.leadership.close()
        except (BadDataError, OSError, TransportError, StoreError) as exc:
            self._reject(exc, "tick")

    def _leads(self) -> bool:
        cluster = self._behind()
        if cluster is None:
            self._said_behind = False
            leading = self.leadership.leads()
        else:  # its metadata would be older than what devices hold: they refuse a rollback
            self.leadership.close()
            leading = False
            if not self._said_behind:
                self._said_behind = True
                log.error(
                    "this worker neither leads nor serves what it lacks: %s",
                    self._behind_why(cluster),
                )
        if leading != self.leading and not isinstance(self.leadership, Sole):
            log.warning(
                "this worker %s",
                "leads: rollouts, experiments, retraining and commands run here"
                if leading
                else "follows: another worker runs rollouts and commands",
            )
            self.leading = leading
        return leading

    def _lead(self, now: float) -> None:
        if self.retention_s is not None and now >= self._next_prune:
            removed = self.store.prune(now - self.retention_s)
            if removed:
                self.guard.recount()
                log.info(
                    "retention: removed %d records older than %.0f days",
                    removed,
                    self.retention_s / 86400,
                )
            self._next_prune = now + PRUNE_EVERY_S
        signing = self.repo.initialised
        steps: list[Callable[[], object]] = [
            *([self._publish_tuf] if signing else []),
            lambda: self.quality.tick(now),
            self._send_outbox,
            self._step_rollouts,
            self._step_experiments,
            *([lambda: self.retrain.maybe(now, self.leadership.fence())] if signing else []),
        ]
        for step in steps:
            if not self.leadership.holds():  # a hung leader woke up: the lead is not its own
                return
            step()

    def _note_refusals(self, now: float) -> None:
        """Store what the guard refused since the last tick; say so once per device and
        reason in this process's log."""
        refused = self.guard.take_refused()
        if not refused:
            return
        self.store.add_refusals(refused, now)
        for device, reasons in refused.items():
            for reason in reasons:
                if (device, reason) not in self._refusing:
                    self._refusing.add((device, reason))
                    log.warning(
                        "%s (counted in `edgehub devices`)",
                        refusal_line(reason, device, self.guard.limits),
                    )

    def _send_outbox(self) -> None:
        """Commands queued by the CLI (shadow, shadow-stop) and by rollout steps, each published
        at QoS 1 to the device's persistent session (an offline device gets it when it
        returns), then marked sent; what a leader that died left unsent, the next one sends.
        Not while this worker has no link to the broker: a command the client only queued in memory
        is not sent, and would be lost with the process."""
        if not self.session.connected.is_set():
            return
        dropped: list[int] = []
        queued: list[tuple[int, str, Command]] = []
        for command_id, device, body in self.store.unsent_commands():
            try:
                cmd = decode_command(dumps(body).encode())
            except BadDataError as exc:
                log.warning("dropping queued command %d for %s: %s", command_id, device, exc)
                dropped.append(command_id)
            else:
                if cmd.kind == "rollback" and cmd.model is not None:
                    self._allow_rollback(cmd)
                queued.append((command_id, device, cmd))
        sent = 0
        try:
            sent = self.send_commands([(device, cmd) for _, device, cmd in queued])
        finally:  # what went out is marked, even if the rest did not (the next tick sends it)
            self.store.mark_sent(dropped + [command_id for command_id, _, _ in queued[:sent]])

    def _allow_rollback(self, cmd: Command) -> None:
        """Before a rollout's rollback goes out (whichever leader sends it): the versions below
        its model signed as rollback targets, so the device may go back to one."""
        assert cmd.model is not None
        if self.repo.allow_rollback(cmd.model.name, cmd.model.version):
            log.info(
                "rollout %s: versions of %s below %s signed as rollback targets",
                cmd.rollout,
                cmd.model.name,
                cmd.model.version,
            )

    def send_commands(self, commands: Sequence[tuple[str, Command]]) -> int:
        """Sign each (device, command) for its device and publish it at QoS 1 to the device's
        persistent session (an offline device gets it when it returns); returns how many went
        out before the MQTT client refused one (TransportError: the rest go on a later tick).
        The device waits for the TUF metadata of now, which names the command key; a deploy or
        a shadow names a delta from the version the device last reported running, where one is
        worth it (cloud_hub/signing/deltas.py), and grants the device the chunks of the target
        and of the delta. The grants and counters of all of them take one transaction."""
        if not commands:
            return 0
        key = self._command_signer()  # ConfigError without keys: no command goes unsigned
        now = time.time()
        with_deltas = [
            (device, replace(cmd, delta=self._delta(device, cmd.model)))
            if cmd.kind in ("deploy", "shadow") and cmd.model is not None and cmd.delta is None
            else (device, cmd)
            for device, cmd in commands
        ]
        tuf_version = self.repo.timestamp_version()  # after the deltas: it names those signed
        ready: list[tuple[str, Command]] = []
        issues: list[Issue] = []
        for device, cmd in with_deltas:
            cmd = replace(cmd, tuf_version=max(cmd.tuf_version, tuf_version))
            targets = []
            if cmd.kind in ("deploy", "shadow") and cmd.target is not None:
                targets.append((cmd.target, cmd.encrypt))
                if cmd.delta is not None:
                    targets.append((cmd.delta.target, cmd.encrypt))
            ready.append((device, cmd))
            issues.append((device, targets))
        counters = self.store.issue_commands(issues, counter_floor(now), now)
        for sent, ((device, cmd), counter) in enumerate(zip(ready, counters, strict=True)):
            signed = sign_command(key, cmd, device, counter, now)
            try:
                self.session.publish(self.topics.device(device, "cmd"), signed.to_bytes())
            except TransportError as exc:
                log.warning("%d commands not sent yet: %s", len(ready) - sent, exc)
                return sent
        return len(ready)

    def _delta(self, device: str, model: ModelRef) -> DeltaRef | None:
        """The delta to `model` from what `device` last reported running, if one is worth it;
        a delta that cannot be made or signed costs the device the full bundle, nothing else."""
        row = self.store.device(device)
        reported = None
        if row is not None and row["model"] and row["version"]:
            with contextlib.suppress(MessageError):  # a name the registry kept from long ago
                reported = ModelRef(row["model"], int(row["version"]))
        try:
            return self.deltas.offer(reported, model)
        except (BadDataError, OSError) as exc:
            log.warning("no delta to %s for %s: %s", model, device, exc)
            return None

    def _command_signer(self) -> Signer:
        if self._command_key is None:
            self._command_key = self.repo.command_signer()
        return self._command_key

    # ---- TUF ----------------------------------------------------------------------------
    def _behind(self) -> int | None:
        """The timestamp version of the TUF metadata the cluster's leader last published, when
        this worker's repository is older (its hub folder is not the one the leader signs in,
        or a copy left behind), else None. A worker alone on its store is never behind."""
        if isinstance(self.leadership, Sole) or not self.repo.initialised:
            return None
        state = self.store.get_state(TUF_STATE)
        cluster = state.get("timestamp_version") if isinstance(state, dict) else None
        if type(cluster) is not int:  # none yet, or not what a leader writes: nothing to go by
            return None
        return cluster if self.repo.timestamp_version() < cluster else None

    def _behind_why(self, cluster: int) -> str:
        return (
            f"its TUF repository ({self.home / 'tuf'}) is at timestamp version "
            f"{self.repo.timestamp_version()}, and the cluster's leader published {cluster}; "
            "every worker must use the hub folder the leader signs in (on a shared filesystem "
            "across machines)"
        )

    def _publish_tuf(self) -> None:
        now = time.monotonic()
        if now >= self._next_timestamp_check:
            self.repo.refresh_timestamp(min_remaining=self.repo.expiry.timestamp / 2)
            self._next_timestamp_check = now + timedelta(minutes=10).total_seconds()
        version = self.repo.timestamp_version()
        if version == self._published_ts:
            return
        files = self.repo.published()
        roots = sorted((n for n in files if n.startswith("root/")), key=_root_number)
        order = [*roots, "targets.json", "snapshot.json", "timestamp.json"]
        for name in order:
            if not self.leadership.holds():  # woke from a hang: newer ones may be out
                return
            self.session.publish_wait(self.topics.tuf(name), files[name], timeout=10, retain=True)
        self._targets.clear()
        self._published_ts = version
        self.store.set_state(TUF_STATE, {"timestamp_version": version})  # for the other workers
        log.info("published TUF metadata, timestamp version %d", version)

    # ---- transfer -----------------------------------------------------------------------
    def serve_chunks(self, device: str, payload: bytes) -> None:
        """Publishes the chunks `payload` (an xfer/req of `device`) asks for."""
        req = decode_xfer_request(payload, MAX_CHUNKS_PER_REQUEST)
        granted = self.store.granted(device, req.target, time.time() - COMMAND_TTL.total_seconds())
        if granted is None or (granted and not req.encrypted):
            self.guard.refuse(device, UNCOMMANDED)  # logged once per device, counted always
            return
        data = self._targets.get(req.target)
        if data is None:
            if req.target not in self.repo.targets():
                cluster = self._behind()
                where = "" if cluster is None else f" here: {self._behind_why(cluster)}"
                raise MessageError(
                    f"xfer/req from {device}: {req.target!r} is not a signed target{where}"
                )
            data = self._targets[req.target] = self.repo.read_target(req.target)
        total = chunk_count(len(data))
        bad = [i for i in req.chunks if i >= total]
        if bad:
            raise MessageError(
                f"xfer/req from {device}: chunk {bad[0]} of {req.target} does not exist "
                f"(it has {total})"
            )
        seal = self._sealer(device, req.target, len(data)) if req.encrypted else None
        topic = self.topics.device(device, "xfer/chunk")
        sizes = [end - start for start, end in (chunk_bounds(i, len(data)) for i in req.chunks)]
        allowed = self.guard.chunks(device, sizes, time.monotonic())
        for index in req.chunks[:allowed]:  # the rest it asks for again, later
            start, end = chunk_bounds(index, len(data), CHUNK_SIZE)
            chunk = XferChunk(req.target, index, len(data), data[start:end])
            if seal is not None:
                chunk = seal(chunk)
            self.session.publish(topic, encode(chunk, jsoncodec.dumps))  # under half json's time

    def _sealer(self, device: str, target: str, size: int) -> Callable[[XferChunk], XferChunk]:
        """Seals chunks of `target` for `device`: one transfer key per (device, target), wrapped
        for the device's enrolled X25519 key and sent with every chunk (so a device that lost
        track, or a restarted hub, needs no other message)."""
        cached = self._transfer_keys.get((device, target))
        if cached is None:
            public = self.store.public_key(device)
            if public is None:
                raise MessageError(
                    f"xfer/req from {device}: an encrypted transfer needs the device's public "
                    "key; enroll it with `edgehub devices enroll` and its device.pub.json"
                )
            key = new_transfer_key()
            cached = self._transfer_keys[(device, target)] = (
                key,
                wrap_key(public, key, device, target),
            )
        key, wrapped = cached

        def seal(chunk: XferChunk) -> XferChunk:
            sealed = seal_chunk(key, target, chunk.index, size, chunk.data)
            return XferChunk(target, chunk.index, size, sealed, wrapped)

        return seal

    # ---- rollouts ----------------------------------------------------------------------
    def _step_rollouts(self) -> None:
        rows = self.store.rollouts(ro.LIVE)
        if not rows:
            return
        fleet = fleet_facts(self.store)
        for row in rows:
            self._step_rollout(row, fleet)

    def _step_experiments(self) -> None:
        """Step the running experiments (cloud_hub.experiments); observers of `handled` hear
        of a change."""
        if time.monotonic() < self._next_experiments:
            return
        self._next_experiments = time.monotonic() + EXPERIMENTS_EVERY_S
        if step_experiments(self.store, self.clock(), self.outcomes):
            with self.handled:
                self.handled.notify_all()

    def _step_rollout(self, row: dict[str, Any], fleet: dict[str, ro.DeviceFacts]) -> None:
        """Step one rollout; write it back (if nobody else did meanwhile), then send."""
        r = ro.Rollout.from_json(row["body"])
        reports = rollout_reports(self.store, r.id)
        before = r.to_json()
        sends = ro.step(r, self.clock(), fleet, reports, lambda d, t: self._measure(r.model, d, t))
        if r.to_json() == before:
            return
        # each as it goes on the wire (as `edgehub shadow` queues one)
        commands = [(send.device, json.loads(encode(self._command(r, send)))) for send in sends]
        if not self.store.update_rollout(r.id, row["rev"], r.state, r.to_json(), commands):
            return  # changed by hand meanwhile: the next tick steps what is stored
        if r.state != row["state"]:
            log.info("rollout %s: %s %s", r.id, r.state, r.halt_reason)
        if commands:
            self._send_outbox()  # now, not a tick later

    @staticmethod
    def _command(r: ro.Rollout, send: ro.Send) -> Command:
        """The command of one send of a step (queued with the step, in its transaction)."""
        return Command(
            id=f"{r.id}-{send.kind}-{send.device}-{len(r.sent_at)}",
            kind=send.kind,
            model=r.model,
            target=r.target,
            tuf_version=r.tuf_version,
            rollout=r.id,
            encrypt=r.encrypt,
            rows=r.plan.shadow_rows or SHADOW_ROWS,
        )

    def _measure(self, model: ModelRef, installed: dict[str, Position], since: float) -> Metrics:
        """What `model` did on these devices after each installed it (at the position given),
        from the records stored since the wave started."""
        return measure_stored(self.store, model, installed, since)
