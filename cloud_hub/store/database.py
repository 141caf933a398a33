"""The hub's storage, behind one layer (SQLAlchemy Core): SQLite by default, PostgreSQL by URL.

Device records (telemetry, drift reports, events, labels) are stored exactly once: (device, boot,
seq) is unique and a repeat is ignored, so an agent may resend whatever it is not sure arrived.
Ground truth (cloud_hub.quality.ledger) is kept beside them: a new telemetry record that names
its rows is indexed, and the labels a device sends are joined, in the transaction that stores
them.

A record's body is stored as it arrived; the hub decodes it once before it stores it
(edge_agent.protocol.records) and refuses one that does not decode. Readers see typed records
through `typed` (or `StoredRecord.decoded`): a row an older hub stored without that check and
that does not decode is skipped, counted and logged, never a traceback.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import socket
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any, TypeVar

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    bindparam,
    case,
    cast,
    create_engine,
    delete,
    event,
    func,
    insert,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from cloud_hub import jsoncodec
from cloud_hub.drift.fleet import pooled_accuracy, pooled_anomalies
from cloud_hub.quality.labels import FROM_DEVICE, LABEL_GRACE_S, JoinedLabel
from cloud_hub.quality.ledger import LabelLedger, define_tables, span_of
from cloud_hub.store import migrations
from cloud_hub.store.errors import (
    RecordKey,
    StoreError,
    Unstorable,
    raise_store_errors,
    safe_url,
    store_error,
)
from cloud_hub.store.types import WIDE, fit_text
from edge_agent.errors import MessageError, TransportError
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.messages import Batch, ModelRef, Status
from edge_agent.protocol.records import (
    Body,
    DeviceStats,
    DriftReport,
    Labels,
    Scalar,
    TelemetryWindow,
    decode,
)

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 10  # a PostgreSQL server that does not answer: said after this, not never
# A peer gone without closing its socket (a machine powered off, a network cut) is found out
# after about KEEPALIVE_IDLE_S + KEEPALIVE_COUNT * KEEPALIVE_INTERVAL_S seconds, on both ends:
# libpq's keepalives for the hub, the server's for each session, so the session of a leader
# that vanished ends and its advisory lock with it (cloud_hub.cluster.leader), where TCP's
# defaults would take about two hours. TCP_USER_TIMEOUT_MS bounds data left unacknowledged.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 5, 2, 3
TCP_USER_TIMEOUT_MS = 15_000
# Every session of one hub process carries its name, so a worker that ends a hung leader's
# lock session ends its others too, with the transactions and row locks they may hold
# (cloud_hub.cluster.leader). At most 63 bytes: PostgreSQL cuts longer names.
SESSION_NAME = f"edgehub:{socket.gethostname()[:40]}:{os.getpid()}"
PG_CONNECT_ARGS = {
    "application_name": SESSION_NAME,
    "connect_timeout": CONNECT_TIMEOUT_S,
    "keepalives": 1,
    "keepalives_idle": KEEPALIVE_IDLE_S,
    "keepalives_interval": KEEPALIVE_INTERVAL_S,
    "keepalives_count": KEEPALIVE_COUNT,
    "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
    "options": (
        f"-c tcp_keepalives_idle={KEEPALIVE_IDLE_S} "
        f"-c tcp_keepalives_interval={KEEPALIVE_INTERVAL_S} "
        f"-c tcp_keepalives_count={KEEPALIVE_COUNT} -c tcp_user_timeout={TCP_USER_TIMEOUT_MS}"
    ),
}
B = TypeVar("B", bound=Body)

Ingest = Status | tuple[str, Batch]  # what the hub stores of one device message
Issue = tuple[str, Sequence[tuple[str, bool]]]  # a command's device and the targets it grants

metadata = MetaData()

devices = Table(
    "devices",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("online", Boolean, nullable=False, default=False),
    Column("boot", WIDE, nullable=False, default=0),
    Column("agent_version", String(32), nullable=False, default=""),
    Column("profile", String(64), nullable=False, default=""),
    Column("model", String(64)),
    Column("version", WIDE),
    Column("last_seen", Float, nullable=False, default=0.0),
    Column("stats", JSON, nullable=False, default=dict),
    Column("public_key", String(64)),  # X25519, base64, from enrollment; for encrypted transfers
    # registry: when the current online spell began, and the labels rollouts target
    Column("online_since", Float, nullable=False, default=0.0),
    Column("group", String(64), nullable=False, default=""),
    Column("tags", JSON, nullable=False, default=list),
)

records = Table(
    "records",
    metadata,
    Column("id", WIDE, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("device", String(64), nullable=False, index=True),
    Column("boot", WIDE, nullable=False),
    Column("seq", WIDE, nullable=False),
    Column("ts", Float, nullable=False),
    Column("received", Float, nullable=False),
    Column("rollout", String(64), index=True),
    Column("body", JSON, nullable=False),
    UniqueConstraint("device", "boot", "seq", name="records_once"),
)

rollouts = Table(
    "rollouts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Column("rev", Integer, nullable=False, default=0),  # compare-and-set: hub and CLI both write
    Column("body", JSON, nullable=False),
)

experiments = Table(  # two models compared across the fleet (cloud_hub.experiments)
    "experiments",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Column("rev", Integer, nullable=False, default=0),  # compare-and-set: hub and CLI both write
    Column("body", JSON, nullable=False),
)

outbox = Table(  # commands the CLI queued for the running hub to send
    "outbox",
    metadata,
    Column("id", WIDE, primary_key=True, autoincrement=True),
    Column("device", String(64), nullable=False),
    Column("body", JSON, nullable=False),
    Column("created", Float, nullable=False),
    Column("sent", Float),
)

refusals = Table(  # what the hub refused of each device (cloud_hub.ingest_limits), per reason
    "refusals",
    metadata,
    Column("device", String(64), primary_key=True),
    Column("reason", String(16), primary_key=True),
    Column("count", WIDE, nullable=False, default=0),
    Column("last", Float, nullable=False, default=0.0),
)

command_counters = Table(  # the last counter a signed command to each device carried
    "command_counters",
    metadata,
    Column("device", String(64), primary_key=True),
    Column("counter", BigInteger, nullable=False, default=0),
)

grants = Table(  # targets a device was commanded to fetch: the hub serves it only these
    "grants",
    metadata,
    Column("device", String(64), primary_key=True),
    Column("target", String(200), primary_key=True),
    Column("encrypt", Boolean, nullable=False, default=False),
    Column("at", Float, nullable=False),
)

hub_state = Table(
    "hub_state",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", JSON, nullable=False),
)

# ground truth: prediction_spans, ground_truth, label_counts (cloud_hub.quality.ledger)
label_tables = define_tables(metadata, devices, records)


retrain_policies = Table(  # when to retrain a model and how (cloud_hub.retrain)
    "retrain_policies",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("model", String(64), nullable=False),
    Column("created", Float, nullable=False),
    Column("last_fired", Float, nullable=False, default=0.0),
    Column("body", JSON, nullable=False),
)

retrain_runs = Table(  # each time a policy fired: its data set, training, verdict, rollout
    "retrain_runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("policy", String(64), nullable=False, index=True),
    Column("state", String(24), nullable=False),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Column("body", JSON, nullable=False),
)


@frozen
class StoredRecord:
    kind: str
    device: str
    boot: int
    seq: int
    ts: float
    body: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.kind} record of {self.device} ({self.boot}, {self.seq})"

    def decoded(self) -> Body:
        """The body, typed; MessageError if it does not decode (edge_agent.protocol.records)."""
        return decode(self.kind, self.body, self.where)


_UNREADABLE_STATS: set[str] = set()  # devices whose stored stats were said not to decode


def stats_of(row: Mapping[str, Any]) -> DeviceStats:
    """The typed `stats` of a registry row; empty (all zero) where they do not decode."""
    return readable_stats(row) or DeviceStats()


def readable_stats(row: Mapping[str, Any]) -> DeviceStats | None:
    """The typed `stats` of a registry row (its device's last status). None for stats stored by
    a hub that did not check them yet and that do not decode: logged once per device."""
    device = str(row.get("id"))
    try:
        return DeviceStats.from_body(row.get("stats") or {}, f"device {device}: stats")
    except MessageError as exc:
        if device not in _UNREADABLE_STATS:
            _UNREADABLE_STATS.add(device)
            log.warning(
                "stored stats that do not decode (stored before the hub checked them): %s", exc
            )
        return None


def typed(rows: Iterable[StoredRecord], of: type[B]) -> list[tuple[StoredRecord, B]]:
    """Each stored record with its body as `of` (records of another type, such as a raw sample
    among telemetry windows, are left out). A body that does not decode (stored by a hub that
    did not check bodies yet) is skipped; how many were is logged with the first error."""
    out: list[tuple[StoredRecord, B]] = []
    skipped, first = 0, ""
    for row in rows:
        try:
            body = row.decoded()
        except MessageError as exc:
            skipped += 1
            first = first or str(exc)
            continue
        if isinstance(body, of):
            out.append((row, body))
    if skipped:
        log.warning(
            "skipped %d stored %s that do not decode (stored before the hub checked record "
            "bodies); the first: %s",
            skipped,
            "record" if skipped == 1 else "records",
            first,
        )
    return out


@frozen
class FleetBucket:
    """What the fleet's records of one model version added up to in one time bucket."""

    bucket: int  # counted from the start, each bucket_s long
    model: str | None
    version: int | None
    rows: int = 0  # inferred, per the telemetry windows
    errors: int = 0  # lines rejected, per the telemetry windows
    alerts: int = 0  # drift reports that alerted


ENGINES = ("sqlite", "postgresql")  # the backends the store is made and tested for


def open_engine(url: str) -> Engine:
    """The engine of the database at `url`, as it is (no migration run): one whose errors are
    StoreErrors, with the SQLite settings the hub relies on. A URL it cannot use, or a driver
    that is not installed, is a StoreError saying so."""
    options: dict[str, Any] = {"json_serializer": dumps}  # NaN refused on every engine
    try:
        parsed = make_url(url)
        if parsed.drivername in ("postgresql", "postgres"):  # psycopg2 to SQLAlchemy
            parsed = parsed.set(drivername="postgresql+psycopg")  # the postgres extra's
        backend = parsed.get_backend_name()
        parsed.port  # noqa: B018 (read: a port that is no number raises here)
    except (SQLAlchemyError, ValueError) as exc:  # not a URL, a port that is no number, ...
        raise StoreError("bad-url", safe_url(url), f"got {safe_url(url)!r} ({exc})") from exc
    if backend not in ENGINES:
        names = " or ".join(ENGINES)
        raise StoreError("bad-url", safe_url(url), f"edgefleet stores in {names}, got {backend}")
    if backend == "postgresql":  # what the URL sets itself wins
        own = parsed.query
        options["connect_args"] = {k: v for k, v in PG_CONNECT_ARGS.items() if k not in own}
    try:
        engine = create_engine(parsed, **options)
    except ImportError as exc:
        raise StoreError("no-driver", safe_url(url), str(exc)) from exc
    except (SQLAlchemyError, ValueError) as exc:  # a driver SQLAlchemy does not know, ...
        raise store_error(url, exc) from exc
    raise_store_errors(engine)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class Store:
    def __init__(self, url: str) -> None:
        self.engine: Engine = open_engine(url)
        self.revision = migrations.upgrade(self.engine)
        self.ledger = LabelLedger(label_tables, self._insert_once)

    def _insert_once(self, table: Table) -> Any:
        return self._upsert(table).on_conflict_do_nothing()

    def _upsert(self, table: Table) -> Any:
        """The dialect's INSERT, which takes an ON CONFLICT clause."""
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            return sqlite.insert(table)
        if dialect == "postgresql":
            return postgresql.insert(table)
        raise TransportError(f"hub store: dialect {dialect!r} is not supported")

    # ---- ingest -----------------------------------------------------------------------
    def ingest(self, items: Sequence[Ingest]) -> Counter[str]:
        """Store statuses and (kind, batch) pairs in one transaction; returns how many records
        were new, per kind (a repeat of a stored record is ignored).

        A handful of statements whatever the number of devices and messages: one UPDATE
        stamps `last_seen` on every device seen (one INSERT more registers those not known
        yet), one INSERT stores every record (the first of a repeated (device, boot, seq)
        wins), one more indexes the new telemetry's predictions; only statuses (applied in
        arrival order, the later one wins) and labels take statements of their own."""
        now = time.time()
        new: Counter[str] = Counter()
        devices_seen = {i.device if isinstance(i, Status) else i[1].device for i in items}
        batches = [i for i in items if not isinstance(i, Status)]
        bodies = self._bodies(batches)  # before the transaction: Unstorable names what is not
        with self.engine.begin() as conn:
            self._seen(conn, sorted(devices_seen), now)  # one order: workers never deadlock
            for item in items:
                if isinstance(item, Status):
                    self._set_status(conn, item, now)
            added = self._add_batches(conn, batches, bodies, now)
            for kind, _batch, stored in added:
                new[kind] += len(stored)
            # ground truth (cloud_hub.quality.ledger): the predictions new telemetry names are
            # indexed first, so labels in this transaction join them at once
            spans = [s for k, b, stored in added if k == "telemetry" for s in _spans(b, stored)]
            self.ledger.index_records(conn, spans, now)
            for kind, batch, stored in added:
                if kind == "labels":
                    self._add_labels(conn, batch, stored, now)
        return new

    def add_batch(self, kind: str, batch: Batch) -> int:
        """Store one batch; returns how many records were new."""
        return self.ingest([(kind, batch)])[kind]

    def set_status(self, status: Status) -> None:
        """A birth, a heartbeat (the agent refreshes its retained status) or the last will."""
        self.ingest([status])

    def _bodies(self, batches: Sequence[tuple[str, Batch]]) -> list[str]:
        """Each record's body as the store keeps it (`dumps`, once), in the order of `batches`
        and their records. Raises Unstorable naming every record whose body it cannot keep."""
        out: list[str] = []
        bad: dict[RecordKey, str] = {}
        for kind, batch in batches:
            for r in batch.records:
                try:
                    out.append(dumps(r.body))
                except ValueError as exc:  # NaN, or a number JSON read as inf (1e999)
                    bad[(kind, batch.device, r.boot, r.seq)] = str(exc)
        if bad:
            raise Unstorable(safe_url(str(self.engine.url)), bad)
        return out

    def _add_batches(
        self, conn: Any, batches: Sequence[tuple[str, Batch]], bodies: list[str], now: float
    ) -> list[tuple[str, Batch, list[tuple[int, int, int]]]]:
        """Insert the records of all `batches` in one statement, `bodies` their bodies dumped
        (`_bodies`); returns each batch with the (id, boot, seq) of its records that were new
        (a repeat is skipped by the conflict clause, and so is a second copy within `batches`:
        the first one is stored)."""
        records = [(kind, batch.device, r) for kind, batch in batches for r in batch.records]
        rows = [
            {
                "kind": kind,
                "device": device,
                "boot": r.boot,
                "seq": r.seq,
                "ts": r.ts,
                "received": now,
                "rollout": _rollout_of(kind, r.body),
                "body": body,
            }
            for (kind, device, r), body in zip(records, bodies, strict=True)
        ]
        if not rows:
            return []
        # keys in one order (a stable sort: the first copy of a key stays first), so workers
        # storing the same resent records at once wait for each other, never deadlock
        rows.sort(key=lambda row: (row["device"], row["boot"], row["seq"]))
        inserted = {
            (kind, device, boot, seq): rid
            for rid, kind, device, boot, seq in self._insert_records(conn, rows)
        }
        out = []
        for kind, batch in batches:
            stored = []
            for r in batch.records:
                rid = inserted.pop((kind, batch.device, r.boot, r.seq), None)
                if rid is not None:  # popped: a copy later in `batches` was not new
                    stored.append((rid, r.boot, r.seq))
            out.append((kind, batch, stored))
        return out

    def _insert_records(self, conn: Any, rows: list[dict[str, Any]]) -> Any:
        """Insert `rows` (a repeat of a stored key is skipped) in one statement; returns the
        (id, kind, device, boot, seq) of those inserted.

        On PostgreSQL the rows go as one JSON text (`json_to_recordset`), written by orjson: a
        statement whose text never changes, so the server prepares it once (a multi-row VALUES
        of 500 rows is 4,000 parameters the driver parses again for every transaction), and one
        parameter the driver sends as it is, where an array a column (`unnest`) cost the hub
        19-27 µs a row in psycopg's list dumper against 3 µs, and the statement 34-44 µs a row
        of wall time against 18 (500-row inserts side by side on one 2-core machine). Every
        value is one orjson writes as json would: device ids and kinds checked, the rollout
        cleaned (`_fit`), boot and seq within 64 bits, ts finite, the body already ASCII text.

        On SQLite they go as multi-row VALUES of plain parameters (each body already dumped,
        by `_bodies`): the driver binds them as they are, where SQLAlchemy's executemany
        processed each row's parameters again (a third of Store.ingest's time, by
        bench/telemetry_bench.py)."""
        if self.engine.dialect.name != "postgresql":
            inserted: list[Any] = []
            for start in range(0, len(rows), _SQLITE_ROWS):
                chunk = rows[start : start + _SQLITE_ROWS]
                params = tuple(v for r in chunk for v in _sqlite_plain(r))
                marks = ",".join(["(?,?,?,?,?,?,?,?)"] * len(chunk))
                sql = f"{_SQLITE_INSERT_RECORDS} VALUES {marks} {_SQLITE_RETURNING}"
                inserted += conn.exec_driver_sql(sql, params).fetchall()
            return inserted
        return conn.execute(_PG_INSERT_RECORDS, {"rows": orjson.dumps(rows).decode()})

    def _add_labels(
        self, conn: Any, batch: Batch, stored: list[tuple[int, int, int]], now: float
    ) -> None:
        """Join the ground truth of newly stored labels records (cloud_hub.quality.ledger)."""
        by_key = {(r.boot, r.seq): r for r in batch.records}
        for _rid, boot, seq in stored:
            labels = Labels.from_body(by_key[(boot, seq)].body, f"labels record of {batch.device}")
            self.ledger.add(conn, labels.labels, FROM_DEVICE, now, device=batch.device)

    def _seen(self, conn: Any, ids: Sequence[str], now: float) -> None:
        """Stamp `last_seen` on the devices `ids` (sorted: workers lock rows in one order) and
        register those not known yet: two statements, the second only for new devices."""
        if not ids:
            return
        if self.engine.dialect.name == "postgresql":  # one JSON text, not a parameter an id
            # (nor an array: psycopg's list dumper cost 4 times orjson's text, as in
            # _insert_records)
            listed = cast(bindparam("ids", orjson.dumps(list(ids)).decode(), String), JSON)
            among = devices.c.id.in_(select(func.json_array_elements_text(listed)))
        else:
            among = devices.c.id.in_(ids)
        stamp = update(devices).where(among).values(last_seen=now).returning(devices.c.id)
        known = set(conn.execute(stamp).scalars())
        new = [{"id": device, "last_seen": now} for device in ids if device not in known]
        if new:
            conn.execute(self._insert_once(devices), new)

    def _set_status(self, conn: Any, status: Status, now: float) -> None:
        values: dict[str, Any] = {"online": status.online, "last_seen": now}
        if status.online:
            values.update(
                boot=status.boot,
                agent_version=_fit(devices.c.agent_version, status.agent_version),
                profile=_fit(devices.c.profile, status.profile),
                model=status.model.name if status.model else None,
                version=status.model.version if status.model else None,
                stats=status.stats,
            )
        before = conn.execute(
            select(devices.c.online, devices.c.boot).where(devices.c.id == status.device)
        ).first()
        if status.online and (before is None or not before.online or before.boot != status.boot):
            values["online_since"] = now
        conn.execute(update(devices).where(devices.c.id == status.device).values(**values))

    def register(self, device: str, public_key: bytes | None = None) -> None:
        """Enrollment: the device is known before it is ever seen (a rollout includes it), with
        its X25519 public key when it has an identity."""
        with self.engine.begin() as conn:
            conn.execute(self._insert_once(devices), [{"id": device}])
            if public_key is not None:
                encoded = base64.b64encode(public_key).decode("ascii")
                conn.execute(
                    update(devices).where(devices.c.id == device).values(public_key=encoded)
                )

    def public_key(self, device: str) -> bytes | None:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(devices.c.public_key).where(devices.c.id == device)
            ).scalar_one_or_none()
        return base64.b64decode(value) if value else None

    # ---- reads ------------------------------------------------------------------------
    def devices(self) -> list[dict[str, Any]]:
        """Every device's row, with `refused`: what the hub refused of it, per reason."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(devices).order_by(devices.c.id)).mappings().all()
        refused = self.refusals()
        return [{**r, "refused": refused.get(r["id"], {})} for r in rows]

    def count(self, kind: str, device: str | None = None) -> int:
        q = select(func.count()).select_from(records).where(records.c.kind == kind)
        if device is not None:
            q = q.where(records.c.device == device)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def records(
        self, kind: str, device: str | None = None, rollout: str | None = None
    ) -> list[StoredRecord]:
        q = select(records).where(records.c.kind == kind).order_by(records.c.id)
        if device is not None:
            q = q.where(records.c.device == device)
        if rollout is not None:
            q = q.where(records.c.rollout == rollout)
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        return [_stored(r) for r in rows]

    def telemetry_totals(self, device: str) -> dict[str, int]:
        """Records received, and the inferences they report."""
        rows = self.records("telemetry", device)
        windows = typed(rows, TelemetryWindow)
        return {"records": len(rows), "inferences": sum(w.count for _, w in windows)}

    # ---- registry: labels ----------------------------------------------------------------
    def device(self, device: str) -> dict[str, Any] | None:
        """One device's row (as in `devices`), or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(devices).where(devices.c.id == device)).mappings().first()
        return {**row, "refused": self.refusals().get(device, {})} if row else None

    def label_device(
        self,
        device: str,
        add: Iterable[str] = (),
        remove: Iterable[str] = (),
        group: str | None = None,
    ) -> dict[str, Any]:
        """Add and remove tags, set the group ("" for none); returns the device's row."""
        with self.engine.begin() as conn:
            row = conn.execute(
                select(devices.c.tags, devices.c.group).where(devices.c.id == device)
            ).first()
            if row is None:
                raise KeyError(device)
            gone = set(remove)
            tags = sorted({t for t in row.tags or [] if t not in gone} | set(add))
            conn.execute(
                update(devices)
                .where(devices.c.id == device)
                .values(tags=tags, group=row.group if group is None else group)
            )
        found = self.device(device)
        assert found is not None
        return found

    def records_since(
        self, kind: str, device_ids: list[str] | None, since: float
    ) -> list[StoredRecord]:
        """Records of these devices (None: of every device) the hub received at or after
        `since` (a wave's metrics, fleet drift over a time range)."""
        q = (
            select(records)
            .where(records.c.kind == kind)
            .where(records.c.received >= since)
            .order_by(records.c.id)
        )
        if device_ids is not None:
            q = q.where(records.c.device.in_(device_ids))
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        return [_stored(r) for r in rows]

    # ---- ground truth (cloud_hub.quality) ----------------------------------------------------
    def add_labels(self, pairs: list[tuple[str, Scalar]], source: str, now: float) -> Counter[str]:
        """Keep (prediction id, label) pairs from `source` (api, csv, ...), joined to their
        predictions where stored; returns how many had each outcome
        (cloud_hub.quality.labels.OUTCOMES)."""
        with self.engine.begin() as conn:
            return self.ledger.add(conn, pairs, source, now)

    def joined_labels(
        self,
        model: ModelRef | None = None,
        devices: Sequence[str] | None = None,
        since: float = 0.0,
    ) -> list[JoinedLabel]:
        """Labels joined to their predictions, received at or after `since` (epoch s), of one
        model version and some devices (None: all), oldest first."""
        with self.engine.connect() as conn:
            return self.ledger.joined(conn, model, devices, since)

    def join_labels(self, now: float, grace_s: float = LABEL_GRACE_S) -> Counter[str]:
        """The join pass: pending labels joined to windows stored since, or unknown past the
        grace period; returns what changed."""
        with self.engine.begin() as conn:
            return self.ledger.join_pending(conn, now, grace_s)

    def label_counts(self) -> dict[str, dict[str, int]]:
        """source -> outcome -> labels so far."""
        with self.engine.connect() as conn:
            return self.ledger.counts(conn)

    def label_states(self) -> dict[str, int]:
        """state (pending, joined, partial, unknown) -> labels kept in it now."""
        with self.engine.connect() as conn:
            return self.ledger.states(conn)

    # ---- rollouts ---------------------------------------------------------------------
    def add_rollout(self, rollout_id: str, state: str, body: dict[str, Any]) -> None:
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(
                insert(rollouts).values(
                    id=rollout_id, state=state, created=now, updated=now, rev=0, body=body
                )
            )

    def update_rollout(
        self,
        rollout_id: str,
        rev: int,
        state: str,
        body: dict[str, Any],
        commands: Sequence[tuple[str, dict[str, Any]]] = (),
    ) -> bool:
        """Write the rollout if nobody else did since revision `rev` was read, and queue the
        (device, command) pairs this step sends in the outbox, in the same transaction: a
        leader that dies after the commit leaves them for the next leader to send, one that
        dies before it leaves neither (the next leader takes the step again)."""
        now = time.time()
        with self.engine.begin() as conn:
            done = conn.execute(
                update(rollouts)
                .where(rollouts.c.id == rollout_id)
                .where(rollouts.c.rev == rev)
                .values(state=state, updated=now, rev=rev + 1, body=body)
            )
            if done.rowcount != 1:
                return False
            if commands:
                rows = [{"device": d, "body": b, "created": now} for d, b in commands]
                conn.execute(insert(outbox), rows)
        return True

    def rollout(self, rollout_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(select(rollouts).where(rollouts.c.id == rollout_id)).mappings().first()
            )
        return dict(row) if row else None

    def rollouts(self, states: Iterable[str] | None = None) -> list[dict[str, Any]]:
        q = select(rollouts).order_by(rollouts.c.created)
        if states is not None:
            q = q.where(rollouts.c.state.in_(list(states)))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings().all()]

    # ---- experiments ------------------------------------------------------------------
    def add_experiment(self, experiment_id: str, state: str, body: dict[str, Any]) -> None:
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(
                insert(experiments).values(
                    id=experiment_id, state=state, created=now, updated=now, rev=0, body=body
                )
            )

    def update_experiment(
        self, experiment_id: str, rev: int, state: str, body: dict[str, Any]
    ) -> bool:
        """Write the experiment if nobody else did since revision `rev` was read."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(experiments)
                .where(experiments.c.id == experiment_id, experiments.c.rev == rev)
                .values(state=state, updated=time.time(), rev=rev + 1, body=body)
            )
        return bool(done.rowcount == 1)

    def experiment(self, experiment_id: str) -> dict[str, Any] | None:
        q = select(experiments).where(experiments.c.id == experiment_id)
        with self.engine.connect() as conn:
            row = conn.execute(q).mappings().first()
        return dict(row) if row else None

    def experiments(self, states: Iterable[str] | None = None) -> list[dict[str, Any]]:
        q = select(experiments).order_by(experiments.c.created)
        if states is not None:
            q = q.where(experiments.c.state.in_(list(states)))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings().all()]

    def remove_devices(self, ids: Sequence[str]) -> None:
        """Forget devices: their registration (status, labels, public key), their unsent
        commands and refusal counts, in one transaction. Their stored records stay (retention
        removes them); a device that reports again is registered again."""
        with self.engine.begin() as conn:
            conn.execute(delete(devices).where(devices.c.id.in_(ids)))
            conn.execute(delete(outbox).where(outbox.c.device.in_(ids), outbox.c.sent.is_(None)))
            conn.execute(delete(refusals).where(refusals.c.device.in_(ids)))
            conn.execute(delete(grants).where(grants.c.device.in_(ids)))

    # ---- command outbox -----------------------------------------------------------------
    def queue_command(self, device: str, body: dict[str, Any]) -> None:
        """A command for `device`, sent by the leading hub worker on its next tick (at least
        once: a leader that dies between publishing it and `mark_sent` leaves it for the next,
        which signs and sends it again; the device answers a repeated deploy "already
        running")."""
        with self.engine.begin() as conn:
            conn.execute(insert(outbox).values(device=device, body=body, created=time.time()))

    def unsent_commands(self) -> list[tuple[int, str, dict[str, Any]]]:
        q = select(outbox.c.id, outbox.c.device, outbox.c.body).where(outbox.c.sent.is_(None))
        with self.engine.connect() as conn:
            return [(r[0], r[1], r[2]) for r in conn.execute(q.order_by(outbox.c.id))]

    def mark_sent(self, command_ids: Sequence[int]) -> None:
        if not command_ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                update(outbox).where(outbox.c.id.in_(command_ids)).values(sent=time.time())
            )

    # ---- signed commands and what they let a device fetch ---------------------------------
    def issue_commands(self, issues: Sequence[Issue], floor: int, now: float) -> list[int]:
        """For each (device, [(target, encrypt), ...]) in turn: the grants of those targets (the
        device may fetch each, encrypted for it where `encrypt`; a grant given again replaces
        the earlier one) and a counter for the next command to the device, above its last one and at
        least `floor` (a device named twice gets two, in order). In one transaction: a rollout
        step's hundred commands took three commits each, 0.4 s on SQLite before the first went
        out. Atomic, so hub workers sharing the store never hand out one counter twice."""
        counters = []
        with self.engine.begin() as conn:
            for device, targets in issues:
                for target, encrypt in targets:
                    conn.execute(
                        delete(grants).where(grants.c.device == device, grants.c.target == target)
                    )
                    conn.execute(
                        insert(grants).values(device=device, target=target, encrypt=encrypt, at=now)
                    )
                conn.execute(
                    self._insert_once(command_counters), [{"device": device, "counter": 0}]
                )
                bumped = command_counters.c.counter + 1
                row = conn.execute(
                    update(command_counters)
                    .where(command_counters.c.device == device)
                    .values(counter=case((bumped > floor, bumped), else_=floor))
                    .returning(command_counters.c.counter)
                ).one()
                counters.append(int(row[0]))
        return counters

    def granted(self, device: str, target: str, since: float) -> bool | None:
        """Whether `device`'s grant of `target` (given after `since`) asks for encryption; None
        when it has none."""
        q = select(grants.c.encrypt).where(
            grants.c.device == device, grants.c.target == target, grants.c.at >= since
        )
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return None if row is None else bool(row[0])

    def prune(self, cutoff: float) -> int:
        """Retention (see prune_records)."""
        return prune_records(self, cutoff)

    def held(self, device: str) -> int:
        """How many records of `device` the store holds (its quota's measure)."""
        q = select(func.count()).select_from(records).where(records.c.device == device)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    # ---- refusals -----------------------------------------------------------------------
    def add_refusals(self, refused: dict[str, Counter[str]], now: float) -> None:
        """Add these counts (device -> reason -> n) to what was refused before."""
        with self.engine.begin() as conn:  # rows in one order: concurrent hubs never deadlock
            for device, reasons in sorted(refused.items()):
                for reason, n in sorted(reasons.items()):
                    key = {"device": device, "reason": reason}
                    conn.execute(self._insert_once(refusals), [key])
                    conn.execute(
                        update(refusals)
                        .where(refusals.c.device == device, refusals.c.reason == reason)
                        .values(count=refusals.c.count + n, last=now)
                    )

    def refusals(self) -> dict[str, dict[str, int]]:
        """device -> reason -> messages (rate) or records (quota) the hub refused so far."""
        out: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            q = select(refusals.c.device, refusals.c.reason, refusals.c.count)
            for device, reason, count in conn.execute(q.order_by(refusals.c.device)):
                out.setdefault(device, {})[reason] = int(count)
        return out

    # ---- small state ------------------------------------------------------------------
    def get_state(self, key: str, default: Any = None) -> Any:
        with self.engine.connect() as conn:
            return _read_state(conn, key, default)

    def set_state(self, key: str, value: Any) -> None:
        with self.engine.begin() as conn:
            self._write_state(conn, key, value)

    def _write_state(self, conn: Any, key: str, value: Any) -> None:
        """`key`'s value in hub_state, within `conn`'s transaction."""
        conn.execute(self._insert_once(hub_state), [{"key": key, "value": value}])
        conn.execute(update(hub_state).where(hub_state.c.key == key).values(value=value))

    # ---- dashboard reads (cloud_hub/web_*) --------------------------------------------
    def latest_records(self, kind: str) -> dict[str, StoredRecord]:
        """The newest record of `kind` from each device that sent one."""
        newest = (
            select(func.max(records.c.id))
            .where(records.c.kind == kind)
            .group_by(records.c.device)
            .scalar_subquery()
        )
        with self.engine.connect() as conn:
            rows = conn.execute(select(records).where(records.c.id.in_(newest))).mappings().all()
        return {r["device"]: _stored(r) for r in rows}

    def recent_records(
        self, kind: str, device: str, since: float = 0.0, limit: int = 500
    ) -> list[StoredRecord]:
        """Up to `limit` of a device's newest records of `kind` stamped after `since`, oldest
        first."""
        q = (
            select(records)
            .where(records.c.kind == kind, records.c.device == device, records.c.ts > since)
            .order_by(records.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        return [_stored(r) for r in reversed(rows)]

    def change_mark(self) -> tuple[Any, ...]:
        """Changes whenever a record is stored, a device is added, removed or sends a status,
        or a refusal is counted (its parts are read from indexes and the small tables), so a
        reader may keep what it computed from those until it does. Retention removing a
        device's newest records shows at the next record stored."""
        q = select(
            select(func.max(records.c.id)).scalar_subquery(),
            select(func.count(), func.max(devices.c.last_seen)).subquery(),
            select(func.coalesce(func.sum(refusals.c.count), 0)).scalar_subquery(),
        )
        with self.engine.connect() as conn:
            return tuple(conn.execute(q).one())

    def fleet_buckets(self, start: float, bucket_s: float) -> list[FleetBucket]:
        """The fleet's records stamped at or after `start`, summed in SQL per bucket of
        `bucket_s` seconds and model version: telemetry rows and errors, drift reports that
        alerted (the dashboard's fleet charts read a fleet's minutes without decoding each
        record). A record that names no model counts as model None, version None."""
        since = (records.c.ts - start) / bucket_s  # at least 0: SQLite's cast truncates it
        postgres = self.engine.dialect.name == "postgresql"  # where a cast rounds
        bucket = (func.floor(since) if postgres else func.cast(since, Integer)).label("bucket")
        name = records.c.body[("model", "name")].as_string().label("name")
        version = records.c.body[("model", "version")].as_integer().label("version")
        errors: ColumnElement[Any] = literal_column(  # a window's errors of every reason
            "(SELECT coalesce(sum(CAST(value AS BIGINT)), 0) "
            "FROM json_each_text(records.body -> 'errors'))"
            if postgres
            else "(SELECT total(value) FROM json_each(records.body, '$.errors'))"
        )
        count = records.c.body["count"].as_integer()
        alert = case((records.c.body["status"].as_string() == "alert", 1), else_=0)
        out: list[FleetBucket] = []
        with self.engine.connect() as conn:
            for kind, rows, errs, alerts in (
                ("telemetry", func.sum(count), func.sum(errors), literal_column("0")),
                ("drift", literal_column("0"), literal_column("0"), func.sum(alert)),
            ):
                q = (
                    select(bucket, name, version, rows, errs, alerts)
                    .where(records.c.kind == kind, records.c.ts >= start)
                    .group_by(bucket, name, version)
                )
                for b, n, v, r, e, a in conn.execute(q):
                    out.append(FleetBucket(int(b), n, v, int(r or 0), int(e or 0), int(a or 0)))
        return out

    def record_counts(self) -> dict[str, int]:
        """Records stored so far, by kind: those held and those retention removed (so the
        count never goes down), read from one snapshot of the database."""
        q = select(records.c.kind, func.count()).group_by(records.c.kind)
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":  # both reads in one snapshot
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            held = {str(kind): int(n) for kind, n in conn.execute(q).all()}
            pruned = _read_state(conn, PRUNED_STATE, {})
        return {k: held.get(k, 0) + int(pruned.get(k, 0)) for k in {*held, *pruned}}


_SQLITE_ROWS = 500  # rows a statement: 4,000 parameters, under SQLite's 32,766
_sqlite_plain = itemgetter("kind", "device", "boot", "seq", "ts", "received", "rollout", "body")
_SQLITE_INSERT_RECORDS = (
    "INSERT INTO records (kind, device, boot, seq, ts, received, rollout, body)"
)
# RETURNING names the rows really inserted (a repeat's conflict skips it)
_SQLITE_RETURNING = "ON CONFLICT DO NOTHING RETURNING id, kind, device, boot, seq"
_PG_INSERT_RECORDS = text(
    "INSERT INTO records (kind, device, boot, seq, ts, received, rollout, body) "
    "SELECT kind, device, boot, seq, ts, received, rollout, CAST(body AS json) "
    "FROM json_to_recordset(CAST(:rows AS json)) AS r(kind text, device text, boot bigint, "
    "seq bigint, ts float8, received float8, rollout text, body text) "
    "ON CONFLICT DO NOTHING RETURNING id, kind, device, boot, seq"
)


def _fit(column: Column[Any], value: str) -> str:
    """Device text as `column` holds it on every engine (cloud_hub.store.types.fit_text)."""
    length = getattr(column.type, "length", None)
    assert length is not None, f"{column}: not a String(n) column"
    return fit_text(value, length)


def _rollout_of(kind: str, body: Mapping[str, Any]) -> str | None:
    """The rollout an event names, for the column that finds a rollout's events (its body keeps
    what the device sent)."""
    rollout = body.get("rollout") if kind == "events" else None
    return _fit(records.c.rollout, rollout) if isinstance(rollout, str) else None


def _stored(row: Any) -> StoredRecord:
    return StoredRecord(row["kind"], row["device"], row["boot"], row["seq"], row["ts"], row["body"])


def _spans(batch: Batch, stored: list[tuple[int, int, int]]) -> list[dict[str, Any]]:
    """The predictions a batch's newly stored telemetry records name (`stored`: their id, boot
    and seq), to index."""
    by_key = {(r.boot, r.seq): r for r in batch.records}
    records = ((rid, by_key[(boot, seq)]) for rid, boot, seq in stored)
    spans = (span_of(rid, batch.device, r.ts, r.body) for rid, r in records)
    return [s for s in spans if s is not None]


# ---- drift reports, captures and retention ------------------------------------------------
# Drift reports are device records of kind "drift" (one per window); these read them per model
# version and device. A report of an alerting window may carry `capture` (a bounded sample of the
# inputs, when the device's profile allows it).


def drift_summary(
    store: Store, model: str | None = None, device: str | None = None
) -> list[dict[str, Any]]:
    """One row per (model, version, device): windows, warn and alert counts, the latest status,
    p-value and report time, the smallest p-value and largest PSI seen, and the features that
    moved (with how many windows named each), most often first, and the accuracy estimated
    without labels over all its windows (None without a calibrated card), or an anomaly
    model's anomalies over them (`pooled_anomalies`; None for other models), and per
    categorical feature the rows whose text the card does not list (`unknown`, {feature:
    rows}, summed over its windows; empty for a model without categories). `p` is None for
    reports from agents before p-values (their status came from fixed PSI bands)."""
    groups: dict[tuple[str, int, str], dict[str, Any]] = {}
    reports: dict[tuple[str, int, str], list[DriftReport]] = {}
    for r, report in typed(store.records("drift", device), DriftReport):
        name, version = _model_of(report)
        if model is not None and model not in (name, f"{name}@{version}"):
            continue
        g = groups.setdefault(
            (name, version, r.device),
            {
                "model": name,
                "version": version,
                "device": r.device,
                "windows": 0,
                "warn": 0,
                "alert": 0,
                "max_psi": 0.0,
                "p": None,
                "min_p": None,
                "moved": {},
                "captures": 0,
                "unknown": {},
            },
        )
        g["windows"] += 1
        if report.status in ("warn", "alert"):
            g[report.status] += 1
        g["status"], g["last_ts"] = report.status, r.ts
        g["max_psi"] = max(g["max_psi"], report.max_psi)
        g["p"] = report.p
        if report.p is not None:
            g["min_p"] = report.p if g["min_p"] is None else min(g["min_p"], report.p)
        for feature in report.features_moved:
            g["moved"][feature] = g["moved"].get(feature, 0) + 1
        g["captures"] += 1 if report.capture is not None else 0
        for feature, seen in report.categories.items():
            g["unknown"][feature] = g["unknown"].get(feature, 0) + seen.unknown
        reports.setdefault((name, version, r.device), []).append(report)
    out = []
    for key in sorted(groups):
        g = groups[key]
        g["accuracy"] = pooled_accuracy(reports[key])
        g["anomalies"] = pooled_anomalies(reports[key])
        g["moved"] = dict(sorted(g["moved"].items(), key=lambda kv: (-kv[1], kv[0])))
        out.append(g)
    return out


def _model_of(report: DriftReport) -> tuple[str, int]:
    return (report.model.name, report.model.version) if report.model else ("?", 0)


def drift_captures(
    store: Store, model: str | None = None, device: str | None = None
) -> list[dict[str, Any]]:
    """The captured inputs of alerting windows: one dict per row, with device, model, version,
    boot, seq (of the report) and one key per feature."""
    rows: list[dict[str, Any]] = []
    for r, report in typed(store.records("drift", device), DriftReport):
        capture = report.capture
        if capture is None:
            continue
        name, version = _model_of(report)
        if model is not None and model not in (name, f"{name}@{version}"):
            continue
        head = {"device": r.device, "model": name, "version": version, "boot": r.boot, "seq": r.seq}
        for values in capture.rows:
            rows.append(head | dict(zip(capture.features, values, strict=True)))
    return rows


def prune_records(store: Store, cutoff: float) -> int:
    """Retention: remove device records received before `cutoff` (epoch seconds), and the
    commands sent before it (every rollout step queues its commands in the outbox; an unsent
    one stays until it is sent)."""
    old = records.c.received < cutoff
    with store.engine.begin() as conn:
        by_kind = select(records.c.kind, func.count()).where(old).group_by(records.c.kind)
        going = {str(kind): int(n) for kind, n in conn.execute(by_kind).all()}
        result = conn.execute(delete(records).where(old))
        if going:  # what `record_counts` adds back: its counts never go down
            pruned = _read_state(conn, PRUNED_STATE, {})
            total = {k: int(pruned.get(k, 0)) + going.get(k, 0) for k in {*pruned, *going}}
            store._write_state(conn, PRUNED_STATE, total)
        store.ledger.prune(conn, cutoff)
        conn.execute(delete(outbox).where(outbox.c.sent < cutoff))
    return int(result.rowcount or 0)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


PRUNED_STATE = "pruned_records"  # hub_state: kind -> records retention removed so far


def _read_state(conn: Any, key: str, default: Any) -> Any:
    """`key`'s value in hub_state as `conn` sees it (`default` when there is none)."""
    row = conn.execute(select(hub_state.c.value).where(hub_state.c.key == key)).first()
    return row[0] if row else default


def dumps(obj: Any) -> str:
    """JSON as the store keeps it, on every engine (the engine's serializer): NaN and Infinity
    are refused, as PostgreSQL's JSON refuses them, so SQLite does not keep what PostgreSQL
    could not. The error names where the number is (the StoreError then says `not-finite`)."""
    try:
        # keys in their order: a drift report lists its features in the card's
        return jsoncodec.dumps(obj)
    except ValueError:
        where = _not_finite(obj, "")
        if where is None:
            raise
        raise ValueError(f"{NOT_FINITE}, got {where[1]} at {where[0] or 'the top'}") from None


NOT_FINITE = "stored JSON: expected finite numbers"  # errors.py's marker of the reason


def _not_finite(obj: Any, path: str) -> tuple[str, float] | None:
    """Where the first NaN or infinite number in `obj` is (a path like `plan.gates[2]`)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return path, obj
    items: Iterable[tuple[str, Any]] = ()
    if isinstance(obj, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in obj.items())
    elif isinstance(obj, list | tuple):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(obj))
    for sub, value in items:
        found = _not_finite(value, sub)
        if found is not None:
            return found
    return None
