"""Ground truth in the hub's store: the prediction index, the labels and their counts
(SQLAlchemy Core over a connection the store hands in; the rules are cloud_hub.quality.labels).

Three tables, made with the store's others (`define_tables`, on its metadata):

- `prediction_spans`: one row per stored telemetry window that names its rows (`WindowRows`)
  and per raw sample that carries an id: the device, boot and row range, the model version and
  the record that holds the predictions. The store adds them in the transaction that stores the
  record (`index_records`), so a window is indexed exactly when it is stored;
- `ground_truth`: one row per prediction id that got a label (the first label wins), with its
  state (pending, joined, partial, unknown) and, once joined, the model version, the
  prediction and when it was made;
- `label_counts`: what happened to the labels, per source and reason (`OUTCOMES`).

A label finds its prediction through the spans of its device and boot that cover its row: one
query per (device, boot) in a batch, whatever its size.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    func,
    select,
    update,
)

from cloud_hub.quality.labels import (
    DUPLICATE,
    FOREIGN,
    JOINED,
    LATE,
    MALFORMED,
    PARTIAL,
    PENDING,
    UNKNOWN,
    JoinedLabel,
    label_value,
)
from cloud_hub.store.types import WIDE
from edge_agent.errors import MessageError
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.ids import PredictionId, parse_prediction_id
from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.records import Scalar

IN_CHUNK = 500  # values in one SQL IN (...) list
PENDING_PER_PASS = 20_000  # pending labels one join pass looks at
FULL_PASS_S = 60.0  # a join pass looks at the pending labels at least this often (grace expiry)


@frozen
class LabelTables:
    spans: Table
    labels: Table
    counts: Table
    devices: Table  # the store's registry (which devices the hub knows)
    records: Table  # the store's device records (which hold the predictions)


def define_tables(metadata: MetaData, devices: Table, records: Table) -> LabelTables:
    spans = Table(
        "prediction_spans",
        metadata,
        Column("id", WIDE, primary_key=True, autoincrement=True),
        Column("record", WIDE, nullable=False),  # records.id
        Column("device", String(64), nullable=False),
        Column("boot", BigInteger, nullable=False),
        Column("first_row", BigInteger, nullable=False),
        Column("last_row", BigInteger, nullable=False),  # inclusive
        Column("sample", Boolean, nullable=False),  # a raw sample (one row), not a window
        Column("has_predictions", Boolean, nullable=False),
        Column("model", String(64), nullable=False),
        Column("version", Integer, nullable=False),
        Column("ts", Float, nullable=False),  # the record's time: when it predicted
        Column("received", Float, nullable=False),  # retention removes it with its record
        Index("prediction_spans_rows", "device", "boot", "first_row"),
    )
    labels = Table(
        "ground_truth",
        metadata,
        Column("device", String(64), primary_key=True),
        Column("boot", BigInteger, primary_key=True),
        Column("row_number", BigInteger, primary_key=True),  # ROW is an SQL keyword
        Column("label", JSON, nullable=False),
        Column("source", String(32), nullable=False),
        Column("received", Float, nullable=False),
        Column("state", String(16), nullable=False),
        Column("model", String(64)),
        Column("version", Integer),
        Column("prediction", JSON),
        Column("predicted", Float),
        Index("ground_truth_state", "state", "received"),
        Index("ground_truth_model", "model", "version", "received"),
    )
    counts = Table(
        "label_counts",
        metadata,
        Column("source", String(32), primary_key=True),
        Column("reason", String(16), primary_key=True),
        Column("count", BigInteger, nullable=False, default=0),
        Column("last", Float, nullable=False, default=0.0),
    )
    return LabelTables(spans, labels, counts, devices, records)


# ---- the index of predictions -----------------------------------------------------------------
def span_of(
    record_id: int, device: str, ts: float, body: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The prediction span of a telemetry record `device` sent (its body decoded once on ingest,
    so well formed), or None for a window without ids, a sample without an id or with another
    device's (a device speaks only for itself)."""
    raw = body.get("raw")
    if raw is not None:
        if raw.get("id") is None:
            return None
        at = parse_prediction_id(raw["id"], "raw.id")
        if at.device != device:
            return None
        model = raw["model"]
        first = last = at.row
        boot, sample, has = at.boot, True, True
    else:
        rows, model = body.get("rows"), body.get("model")
        if rows is None or model is None or not body.get("count"):
            return None
        boot, first = rows["boot"], rows["first"]
        last, sample = first + body["count"] - 1, False
        has = rows.get("predictions") is not None
    return {
        "record": record_id,
        "device": device,
        "boot": boot,
        "first_row": first,
        "last_row": last,
        "sample": sample,
        "has_predictions": has,
        "model": model["name"],
        "version": model["version"],
        "ts": ts,
    }


@dataclass
class _Spans:
    """The spans of one (device, boot) over a range of rows, to resolve rows against."""

    windows: list[Any]  # rows of prediction_spans, sorted by first_row
    samples: dict[int, Any]  # row -> a raw sample span
    starts: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.starts = [w.first_row for w in self.windows]

    def window(self, row: int) -> Any | None:
        i = bisect.bisect_right(self.starts, row) - 1
        if i >= 0 and self.windows[i].last_row >= row:
            return self.windows[i]
        return None


@frozen
class Found:
    """What the store holds of a row: its prediction (or not: `state` partial)."""

    state: str  # joined or partial
    model: str
    version: int
    prediction: Scalar
    predicted: float


class LabelLedger:
    """The ground truth tables of one store. `insert_once(table)` is the store's INSERT that
    skips a row whose key is stored (ON CONFLICT DO NOTHING)."""

    def __init__(self, tables: LabelTables, insert_once: Callable[[Table], Any]) -> None:
        self.t = tables
        self.insert_once = insert_once
        self._indexed = -1  # the newest span the last join pass saw
        self._next_full = 0.0

    # ---- ingest: the store calls these in the transaction that stores the records ----------
    def index_records(self, conn: Any, spans: Sequence[dict[str, Any]], now: float) -> None:
        if spans:
            conn.execute(self.t.spans.insert(), [{**s, "received": now} for s in spans])

    # ---- labels in ------------------------------------------------------------------------
    def add(
        self,
        conn: Any,
        pairs: Iterable[tuple[str, Any]],
        source: str,
        now: float,
        device: str | None = None,
    ) -> Counter[str]:
        """Keep each (prediction id, label) the rules allow and join what can be joined now;
        returns the count of each outcome. With `device`, labels a device sent: one about
        another device's prediction is foreign."""
        outcomes: Counter[str] = Counter()
        wanted: dict[PredictionId, Scalar] = {}
        for text, value in pairs:
            try:
                at = parse_prediction_id(text)
            except MessageError:
                outcomes[MALFORMED] += 1
                continue
            label = label_value(value)
            if label is None:
                outcomes[MALFORMED] += 1
            elif device is not None and at.device != device:
                outcomes[FOREIGN] += 1
            elif at in wanted:
                outcomes[DUPLICATE] += 1
            else:
                wanted[at] = label
        known = self._known_devices(conn, {at.device for at in wanted})
        for at in [at for at in wanted if at.device not in known]:
            del wanted[at]
            outcomes[UNKNOWN] += 1
        rows = []
        for (dev, boot), ats in _by_boot(wanted).items():
            stored = self._stored_rows(conn, dev, boot, [a.row for a in ats])
            found = self._resolve(conn, dev, boot, [a.row for a in ats if a.row not in stored])
            for at in ats:
                if at.row in stored:
                    outcomes[DUPLICATE] += 1
                    continue
                row = {
                    "device": dev,
                    "boot": boot,
                    "row_number": at.row,
                    "label": wanted[at],
                    "source": source,
                    "received": now,
                    "state": PENDING,
                    "model": None,
                    "version": None,
                    "prediction": None,
                    "predicted": None,
                }
                hit = found.get(at.row)
                if hit is not None:
                    row.update(
                        state=hit.state,
                        model=hit.model,
                        version=hit.version,
                        prediction=hit.prediction,
                        predicted=hit.predicted,
                    )
                rows.append(row)
        if rows:  # a row: its key, label, source, received, state and what it joined
            keys = self.t.labels.c.device, self.t.labels.c.boot, self.t.labels.c.row_number
            inserted = {
                tuple(r)
                for r in conn.execute(self.insert_once(self.t.labels).returning(*keys), rows)
            }
            for row in rows:
                if (row["device"], row["boot"], row["row_number"]) not in inserted:
                    outcomes[DUPLICATE] += 1  # a concurrent writer stored it first
                else:
                    outcomes[LATE if row["state"] == PENDING else str(row["state"])] += 1
        self._count(conn, source, outcomes, now)
        return outcomes

    def join_pending(self, conn: Any, now: float, grace_s: float) -> Counter[str]:
        """The join pass: pending labels whose window is stored now are joined; those still
        without one `grace_s` after they arrived are unknown. Returns what changed. A label is
        joined on arrival if it can be, so a pass has work only when windows were indexed since
        the last one: otherwise it looks only every FULL_PASS_S (for the grace period, and for
        a window a concurrent transaction indexed under an older id)."""
        newest = conn.execute(select(func.max(self.t.spans.c.id))).scalar() or 0
        if newest == self._indexed and now < self._next_full:
            return Counter()
        self._indexed, self._next_full = newest, now + FULL_PASS_S
        t = self.t.labels
        pending = conn.execute(
            select(t.c.device, t.c.boot, t.c.row_number, t.c.source, t.c.received)
            .where(t.c.state == PENDING)
            .order_by(t.c.received)
            .limit(PENDING_PER_PASS)
        ).all()
        changed: dict[str, Counter[str]] = {}
        groups: dict[tuple[str, int], list[Any]] = {}
        for p in pending:
            groups.setdefault((p.device, p.boot), []).append(p)
        for (dev, boot), items in groups.items():
            found = self._resolve(conn, dev, boot, [p.row_number for p in items])
            for p in items:
                hit = found.get(p.row_number)
                key = (t.c.device == dev) & (t.c.boot == boot) & (t.c.row_number == p.row_number)
                if hit is not None:
                    conn.execute(
                        update(t)
                        .where(key)
                        .values(
                            state=hit.state,
                            model=hit.model,
                            version=hit.version,
                            prediction=hit.prediction,
                            predicted=hit.predicted,
                        )
                    )
                    changed.setdefault(p.source, Counter())[hit.state] += 1
                elif p.received <= now - grace_s:
                    conn.execute(update(t).where(key).values(state=UNKNOWN))
                    changed.setdefault(p.source, Counter())[UNKNOWN] += 1
        total: Counter[str] = Counter()
        for source, counts in changed.items():
            self._count(conn, source, counts, now)
            total.update(counts)
        return total

    # ---- reads ----------------------------------------------------------------------------
    def joined(
        self,
        conn: Any,
        model: ModelRef | None = None,
        devices: Sequence[str] | None = None,
        since: float = 0.0,
    ) -> list[JoinedLabel]:
        t = self.t.labels
        q = select(t).where(t.c.state == JOINED, t.c.received >= since)
        if model is not None:
            q = q.where(t.c.model == model.name, t.c.version == model.version)
        if devices is not None:
            q = q.where(t.c.device.in_(list(devices)))
        q = q.order_by(t.c.received, t.c.device, t.c.boot, t.c.row_number)
        return [
            JoinedLabel(
                r.device,
                r.boot,
                r.row_number,
                ModelRef(r.model, r.version),
                r.prediction,
                r.label,
                r.received,
                r.predicted or 0.0,
            )
            for r in conn.execute(q)
        ]

    def counts(self, conn: Any) -> dict[str, dict[str, int]]:
        """source -> reason -> labels so far."""
        out: dict[str, dict[str, int]] = {}
        q = select(self.t.counts.c.source, self.t.counts.c.reason, self.t.counts.c.count)
        for source, reason, n in conn.execute(q.order_by(self.t.counts.c.source)):
            out.setdefault(source, {})[reason] = int(n)
        return out

    def states(self, conn: Any) -> dict[str, int]:
        """state -> labels kept in it now."""
        t = self.t.labels
        q = select(t.c.state, func.count()).group_by(t.c.state)
        return {str(state): int(n) for state, n in conn.execute(q)}

    # ---- helpers --------------------------------------------------------------------------
    def _count(self, conn: Any, source: str, outcomes: Counter[str], now: float) -> None:
        c = self.t.counts.c
        for reason, n in outcomes.items():
            if not n:
                continue
            conn.execute(self.insert_once(self.t.counts), [{"source": source, "reason": reason}])
            conn.execute(
                update(self.t.counts)
                .where(c.source == source, c.reason == reason)
                .values(count=c.count + n, last=now)
            )

    def _known_devices(self, conn: Any, wanted: set[str]) -> set[str]:
        known: set[str] = set()
        ids = sorted(wanted)
        for i in range(0, len(ids), IN_CHUNK):
            q = select(self.t.devices.c.id).where(self.t.devices.c.id.in_(ids[i : i + IN_CHUNK]))
            known.update(r[0] for r in conn.execute(q))
        return known

    def _stored_rows(self, conn: Any, device: str, boot: int, rows: list[int]) -> set[int]:
        t = self.t.labels
        found: set[int] = set()
        for i in range(0, len(rows), IN_CHUNK):
            q = select(t.c.row_number).where(
                t.c.device == device,
                t.c.boot == boot,
                t.c.row_number.in_(rows[i : i + IN_CHUNK]),
            )
            found.update(r[0] for r in conn.execute(q))
        return found

    def _resolve(self, conn: Any, device: str, boot: int, rows: list[int]) -> dict[int, Found]:
        """row -> what the store holds of it, for the rows of `device`/`boot` it covers."""
        if not rows:
            return {}
        s = self.t.spans.c
        q = (
            select(self.t.spans)
            .where(
                s.device == device,
                s.boot == boot,
                s.first_row <= max(rows),
                s.last_row >= min(rows),
            )
            .order_by(s.first_row)
        )
        found = conn.execute(q).all()
        spans = _Spans(
            [f for f in found if not f.sample], {f.first_row: f for f in found if f.sample}
        )
        hits: dict[int, Any] = {}
        for row in rows:
            window = spans.window(row)
            sample = spans.samples.get(row)
            if window is not None and window.has_predictions:
                hits[row] = window
            elif sample is not None:
                hits[row] = sample
            elif window is not None:
                hits[row] = window  # the row, without its prediction
        bodies = self._bodies(conn, {h.record for h in hits.values() if h.has_predictions})
        out = {}
        for row, span in hits.items():
            body = bodies.get(span.record)
            if not span.has_predictions or body is None:
                out[row] = Found(PARTIAL, span.model, span.version, None, span.ts)
            elif span.sample:
                out[row] = Found(
                    JOINED, span.model, span.version, body["raw"]["prediction"], span.ts
                )
            else:
                prediction = body["rows"]["predictions"][row - span.first_row]
                out[row] = Found(JOINED, span.model, span.version, prediction, span.ts)
        return out

    def _bodies(self, conn: Any, ids: set[int]) -> dict[int, dict[str, Any]]:
        r = self.t.records.c
        out: dict[int, dict[str, Any]] = {}
        ordered = sorted(ids)
        for i in range(0, len(ordered), IN_CHUNK):
            q = select(r.id, r.body).where(r.id.in_(ordered[i : i + IN_CHUNK]))
            out.update({rid: body for rid, body in conn.execute(q)})
        return out

    def prune(self, conn: Any, cutoff: float) -> None:
        """Retention: the spans of records received before `cutoff` go with them (labels
        joined already keep their prediction)."""
        conn.execute(self.t.spans.delete().where(self.t.spans.c.received < cutoff))


def _by_boot(wanted: Iterable[PredictionId]) -> dict[tuple[str, int], list[PredictionId]]:
    groups: dict[tuple[str, int], list[PredictionId]] = {}
    for at in wanted:
        groups.setdefault((at.device, at.boot), []).append(at)
    return groups
