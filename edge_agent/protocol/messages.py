"""Message schemas of the wire contract: JSON, UTF-8, each with "v" (schema version).

`encode(msg)` gives bytes for the wire; `decode_*` parse bytes back into a message or raise
MessageError saying which field was expected to be what, and what arrived.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import field
from typing import Any, Protocol

from edge_agent.errors import MessageError
from edge_agent.protocol import SCHEMA_VERSION
from edge_agent.protocol.fields import field_of, matching, type_name
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.topics import check_device_id

EVENTS = (
    "offered",
    "downloading",
    "verified",
    "installed",
    "healthy",
    "rolled-back",
    "rejected",
    "shadowing",  # a candidate runs next to the serving model; its outputs are never acted on
    "shadow-report",  # body["shadow"]: rows, agreement, latency_ms of current and candidate
)
COMMAND_KINDS = ("deploy", "rollback", "shadow", "shadow-stop")
SHADOW_ROWS = 200  # live rows a shadow compares before it reports
_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_VERSION = re.compile(r"[0-9]{1,18}")
MAX_INT = 2**63 - 1  # the largest integer the SQLite/PostgreSQL stores hold


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


_STRICT = json.JSONDecoder(parse_constant=_reject_constant)


def parse_json(payload: bytes, constants: bool = False) -> Any:
    """The JSON value in `payload` (UTF-8); NaN and Infinity (not JSON) refused (ValueError)
    unless `constants`. Errors: UnicodeDecodeError, JSONDecodeError (a ValueError), ValueError,
    RecursionError. The hub reads batches with cloud_hub.jsoncodec.loads, which answers the same
    faster."""
    text = payload.decode("utf-8")
    return json.loads(text) if constants else _STRICT.decode(text)


Parse = Callable[[bytes, bool], Any]  # parse_json, or what answers the same
Dump = Callable[[Any], str]  # compact_json, or what answers the same


def _finite(value: int | float, where: str) -> float:
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        number = math.inf
    if not math.isfinite(number):
        raise MessageError(f"{where}: expected a finite number, got {value!r:.40}")
    return number


def _count(value: int, where: str) -> int:
    if not 0 <= value <= MAX_INT:
        raise MessageError(f"{where}: expected an integer from 0 to {MAX_INT}, got {value}")
    return value


def load_json(
    payload: bytes, where: str, constants: bool = False, parse: Parse = parse_json
) -> dict[str, Any]:
    """Bytes -> JSON object with a supported "v". NaN and Infinity (not JSON) are refused,
    unless `constants`: then they are read as floats, for the reader to refuse where they
    are."""
    try:
        obj = parse(payload, constants)
    except UnicodeDecodeError as exc:
        raise MessageError(f"{where}: expected UTF-8 JSON, got undecodable bytes") from exc
    except json.JSONDecodeError as exc:
        raise MessageError(f"{where}: expected JSON, got {payload[:60]!r} ({exc.msg})") from exc
    except (ValueError, RecursionError) as exc:
        # NaN/Infinity (not JSON), integers of thousands of digits, nesting too deep to parse
        raise MessageError(f"{where}: expected JSON, got {payload[:60]!r} ({exc})") from exc
    if not isinstance(obj, dict):
        raise MessageError(f"{where}: expected a JSON object, got {type_name(obj)}")
    version = field_of(obj, "v", int, where)
    if version != SCHEMA_VERSION:
        raise MessageError(f"{where}.v: expected schema version {SCHEMA_VERSION}, got {version}")
    return obj


_COMPACT = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # made once, not per call


def compact_json(obj: Any) -> str:
    """`obj` as compact ASCII JSON: ValueError for NaN and Infinity, TypeError for what JSON
    has no form for."""
    return _COMPACT.encode(obj)


def dump_json(obj: dict[str, Any], dump: Dump = compact_json) -> bytes:
    """A message's JSON, schema version first; `dump` writes it (compact_json, or what
    answers the same: the hub's cloud_hub.jsoncodec.dumps)."""
    return dump({"v": SCHEMA_VERSION, **obj}).encode()


def check_model_name(value: object, where: str) -> str:
    expected = "a model name of 1-64 lowercase letters, digits, '.', '_' or '-'"
    return matching(value, _MODEL_NAME, where, expected)


@frozen
class ModelRef:
    """A model name and its monotonically increasing version."""

    name: str
    version: int

    def __post_init__(self) -> None:
        check_model_name(self.name, "model name")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise MessageError(f"model version: expected an integer >= 1, got {self.version!r}")

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """`name@version`, as the CLI takes it."""
        name, sep, version = text.partition("@")
        if not sep or not _VERSION.fullmatch(version):
            raise MessageError(f"model reference: expected NAME@VERSION like wine@2, got {text!r}")
        return cls(name, int(version))

    @property
    def target_path(self) -> str:
        """Where the hub's TUF repository keeps this model's bundle."""
        return f"{self.name}/{self.version}.zip"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version}

    @classmethod
    def from_json(cls, obj: object, where: str) -> ModelRef:
        if not isinstance(obj, dict):
            raise MessageError(f"{where}: expected an object, got {type_name(obj)}")
        name = field_of(obj, "name", str, where)
        version = field_of(obj, "version", int, where)
        try:
            return cls(name, version)
        except MessageError as exc:
            raise MessageError(f"{where}: {exc}") from exc


@frozen
class Status:
    """Retained on dev/{id}/status. The broker's last will publishes online=False."""

    device: str
    online: bool
    boot: int = 0
    agent_version: str = ""
    profile: str = ""
    model: ModelRef | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    ts: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "online": self.online,
            "boot": self.boot,
            "agent_version": self.agent_version,
            "profile": self.profile,
            "model": self.model.to_json() if self.model else None,
            "stats": self.stats,
            "ts": self.ts,
        }


@frozen
class StorageCondition:
    """What a device says of its own storage: `stats["storage"]` of its status (published
    directly, so the hub hears it while nothing can be buffered) and `storage` in its telemetry
    records once they can be kept again. `ok` is False while its state folder or buffer refuses
    writes: `error` says what, `reasons` the codes of why (edge_agent.errors.STORAGE_REASONS:
    "disk-full", "read-only", ...), `since` when it began (epoch seconds). `unkept` counts, per
    kind of record, what the device inferred but could not keep since it started."""

    ok: bool = True
    error: str | None = None
    since: float | None = None
    unkept: Mapping[str, int] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "error": self.error,
            "reasons": list(self.reasons),
            "since": self.since,
            "unkept": dict(self.unkept),
        }

    @classmethod
    def from_json(cls, obj: object, where: str) -> StorageCondition:
        if not isinstance(obj, dict):
            raise MessageError(f"{where}: expected an object, got {type_name(obj)}")
        error = obj.get("error")
        if error is not None and not isinstance(error, str):
            raise MessageError(f"{where}.error: expected string or null, got {type_name(error)}")
        since = obj.get("since")
        if since is not None:
            since = _finite(field_of(obj, "since", (int, float), where), f"{where}.since")
        unkept = field_of(obj, "unkept", dict, where) if "unkept" in obj else {}
        for kind in unkept:
            _count(field_of(unkept, kind, int, f"{where}.unkept"), f"{where}.unkept.{kind}")
        reasons = field_of(obj, "reasons", list, where) if "reasons" in obj else []
        for i, reason in enumerate(reasons):
            if not isinstance(reason, str):
                raise MessageError(
                    f"{where}.reasons[{i}]: expected string, got {type_name(reason)}"
                )
        ok = field_of(obj, "ok", bool, where)
        return cls(ok, error, since, dict(unkept), tuple(reasons))


def decode_status(payload: bytes) -> Status:
    """The status envelope; its `stats` body is checked by records.decode_checked_status."""
    where = "status"
    obj = load_json(payload, where)
    model = obj.get("model")
    stats = field_of(obj, "stats", dict, where) if "stats" in obj else {}
    return Status(
        device=check_device_id(field_of(obj, "device", str, where), f"{where}.device"),
        online=field_of(obj, "online", bool, where),
        boot=_count(field_of(obj, "boot", int, where), f"{where}.boot") if "boot" in obj else 0,
        agent_version=str(obj.get("agent_version", "")),
        profile=str(obj.get("profile", "")),
        model=ModelRef.from_json(model, f"{where}.model") if model is not None else None,
        stats=stats,
        ts=_finite(field_of(obj, "ts", (int, float), where), f"{where}.ts") if "ts" in obj else 0.0,
    )


@frozen
class Record:
    """One buffered record: (boot, seq) identifies it for exactly-once ingest, and orders it
    among everything its device recorded (one sequence for every kind within a boot)."""

    boot: int
    seq: int
    ts: float
    body: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"boot": self.boot, "seq": self.seq, "ts": self.ts, **self.body}


def body_json(body: dict[str, Any], where: str) -> str:
    """A record's body as JSON text, compact and ASCII, the way it is kept and sent."""
    try:
        return compact_json(body)
    except (TypeError, ValueError) as exc:
        raise MessageError(f"{where}: expected a body JSON can hold, got {exc}") from exc


def record_json(boot: int, seq: int, ts: float, body: str) -> str:
    """`Record.to_json`'s JSON from the body's JSON text (`body_json`), without parsing it:
    the envelope's fields go in front of the body's."""
    head = f'{{"boot":{boot},"seq":{seq},"ts":{ts!r}'
    return head + "}" if body.strip() == "{}" else f"{head},{body.lstrip()[1:]}"


def encode_records(device: str, records: Iterable[str]) -> bytes:
    """A `Batch`'s message (what `encode` makes of it) from its records' JSON (`record_json`)."""
    head = dump_json({"device": device})[:-1]
    return b'%b,"records":[%b]}' % (head, ",".join(records).encode())


@frozen
class Batch:
    """What goes on dev/{id}/telemetry, drift and events: a list of records."""

    device: str
    records: tuple[Record, ...]

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "records": [r.to_json() for r in self.records]}


def decode_batch(payload: bytes, where: str, parse: Parse = parse_json) -> Batch:
    """A batch of records. A NaN or Infinity in a record's body is read as a float, so that
    record alone is refused (the hub's store cannot keep it: cloud_hub.hub), not its batch; in
    a record's envelope, the batch is refused as malformed."""
    obj = load_json(payload, where, constants=True, parse=parse)
    device = check_device_id(field_of(obj, "device", str, where), f"{where}.device")
    raw = field_of(obj, "records", list, where)
    records = []
    for i, item in enumerate(raw):
        if type(item) is dict:  # the common case, checked without naming where
            boot, seq, ts = item.get("boot"), item.get("seq"), item.get("ts")
            if (
                type(boot) is int
                and type(seq) is int
                and type(ts) is float
                and 0 <= boot <= MAX_INT
                and 0 <= seq <= MAX_INT
                and math.isfinite(ts)
            ):
                del item["boot"], item["seq"], item["ts"]  # what is left is the body
                records.append(Record(boot, seq, ts, item))
                continue
        at = f"{where}.records[{i}]"  # the same checks again, saying what is wrong
        if not isinstance(item, dict):
            raise MessageError(f"{at}: expected an object, got {type_name(item)}")
        boot = field_of(item, "boot", int, at)
        seq = field_of(item, "seq", int, at)
        ts = _finite(field_of(item, "ts", (int, float), at), f"{at}.ts")
        if not (0 <= boot <= MAX_INT and 0 <= seq <= MAX_INT):
            raise MessageError(
                f"{at}: expected boot and seq from 0 to {MAX_INT}, got ({boot}, {seq})"
            )
        body = {k: v for k, v in item.items() if k not in ("boot", "seq", "ts")}
        records.append(Record(boot, seq, ts, body))
    return Batch(device, tuple(records))


Span = tuple[int, int, int]  # (boot, first seq, last seq), both ends included
MAX_SPANS = 10_000  # a confirmation names at most this many spans


class Keyed(Protocol):
    """What has a (boot, seq) key: a `Record`, a buffer's `Pending`."""

    @property
    def boot(self) -> int: ...

    @property
    def seq(self) -> int: ...


def spans_of(records: Iterable[Keyed]) -> tuple[Span, ...]:
    """The (boot, seq) keys of `records` as sorted runs of consecutive seqs."""
    # one record: most of what a hub confirms, its devices reporting once a second
    if isinstance(records, list | tuple) and len(records) == 1:
        (r,) = records
        return ((r.boot, r.seq, r.seq),)
    out: list[list[int]] = []
    for boot, seq in sorted({(r.boot, r.seq) for r in records}):
        if out and out[-1][0] == boot and out[-1][2] == seq - 1:
            out[-1][2] = seq
        else:
            out.append([boot, seq, seq])
    return tuple((b, first, last) for b, first, last in out)


@frozen
class Confirm:
    """Hub -> device on dev/{id}/ack: the (boot, seq) spans the hub has committed to its store
    (now, or earlier for a repeat). Only then does the device forget those records; the broker's
    PUBACK says nothing about the hub."""

    device: str
    spans: tuple[Span, ...]

    def __contains__(self, key: tuple[int, int]) -> bool:
        boot, seq = key
        return any(b == boot and first <= seq <= last for b, first, last in self.spans)

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "spans": [list(s) for s in self.spans]}


def decode_confirm(payload: bytes) -> Confirm:
    where = "ack"
    obj = load_json(payload, where)
    device = check_device_id(field_of(obj, "device", str, where), f"{where}.device")
    raw = field_of(obj, "spans", list, where)
    if len(raw) > MAX_SPANS:
        raise MessageError(f"{where}.spans: expected at most {MAX_SPANS} spans, got {len(raw)}")
    spans: list[Span] = []
    for i, item in enumerate(raw):
        at = f"{where}.spans[{i}]"
        ok = isinstance(item, list) and len(item) == 3
        if not ok or any(isinstance(n, bool) or not isinstance(n, int) for n in item):
            raise MessageError(f"{at}: expected [boot, first seq, last seq], got {item!r:.60}")
        boot, first, last = (_count(n, at) for n in item)
        if first > last:
            raise MessageError(f"{at}: expected first seq <= last seq, got {first} > {last}")
        spans.append((boot, first, last))
    return Confirm(device, tuple(spans))


def check_event(body: dict[str, Any], where: str) -> str:
    event = field_of(body, "event", str, where)
    if event not in EVENTS:
        raise MessageError(f"{where}.event: expected one of {', '.join(EVENTS)}, got {event!r}")
    return event


@frozen
class DeltaRef:
    """A cheaper way to a deploy's target: the TUF target `target` rebuilds it from the bundle
    of `base`, an older version of the same model (edge_agent/update/delta.py). The hub names
    the version the device last reported running; the device uses the delta only if the
    bundle it holds is exactly the one the delta was made from, else it fetches the target."""

    base: ModelRef
    target: str

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base.to_json(), "target": self.target}

    @classmethod
    def from_json(cls, obj: object, where: str) -> DeltaRef:
        if not isinstance(obj, dict):
            raise MessageError(f"{where}: expected an object, got {type_name(obj)}")
        return cls(
            ModelRef.from_json(obj.get("base"), f"{where}.base"),
            field_of(obj, "target", str, where),
        )


@frozen
class Command:
    """Hub -> device on dev/{id}/cmd (QoS 1, persistent session).

    `deploy` names a TUF target; the device waits until its TUF timestamp is at least
    `tuf_version` before it looks the target up, so it never races the metadata. `shadow`
    names a candidate the same way: the device verifies it, runs it next to the serving model
    on live input without acting on its outputs, and reports on `events` every `rows` rows
    (`shadow-report`) until `shadow-stop` or the next deploy. Either may name a `delta` from
    the version the device reported running (an agent that does not know the field fetches
    the whole target, as before).
    """

    id: str
    kind: str
    model: ModelRef | None = None
    target: str | None = None
    tuf_version: int = 0
    rollout: str | None = None
    encrypt: bool = False  # fetch the target encrypted for this device's X25519 key
    rows: int = SHADOW_ROWS  # shadow: live rows per report
    delta: DeltaRef | None = None  # deploy, shadow: the target rebuilt from an older version

    def __post_init__(self) -> None:
        if self.kind not in COMMAND_KINDS:
            raise MessageError(
                f"command.kind: expected one of {', '.join(COMMAND_KINDS)}, got {self.kind!r}"
            )
        if self.kind in ("deploy", "shadow") and (self.model is None or not self.target):
            raise MessageError(f"command: a {self.kind} needs both 'model' and 'target'")
        if self.delta is not None:
            base, model = self.delta.base, self.model
            if model is None or base.name != model.name or base.version >= model.version:
                raise MessageError(
                    f"command.delta.base: expected an older version of {model}, got {base}"
                )
        if not 1 <= self.rows <= 1_000_000:
            raise MessageError(f"command.rows: expected 1 to 1000000, got {self.rows}")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "model": self.model.to_json() if self.model else None,
            "target": self.target,
            "tuf_version": self.tuf_version,
            "rollout": self.rollout,
            "encrypt": self.encrypt,
            "rows": self.rows,
            "delta": self.delta.to_json() if self.delta else None,
        }


def decode_command(payload: bytes) -> Command:
    return command_from_json(load_json(payload, "command"), "command")


def command_from_json(obj: dict[str, Any], where: str) -> Command:
    model = obj.get("model")
    target = obj.get("target")
    rollout = obj.get("rollout")
    delta = obj.get("delta")
    if target is not None and not isinstance(target, str):
        raise MessageError(f"{where}.target: expected string, got {type_name(target)}")
    if rollout is not None and not isinstance(rollout, str):
        raise MessageError(f"{where}.rollout: expected string, got {type_name(rollout)}")
    return Command(
        id=field_of(obj, "id", str, where),
        kind=field_of(obj, "kind", str, where),
        model=ModelRef.from_json(model, f"{where}.model") if model is not None else None,
        target=target,
        tuf_version=field_of(obj, "tuf_version", int, where) if "tuf_version" in obj else 0,
        rollout=rollout,
        encrypt=field_of(obj, "encrypt", bool, where) if "encrypt" in obj else False,
        rows=field_of(obj, "rows", int, where) if "rows" in obj else SHADOW_ROWS,
        delta=DeltaRef.from_json(delta, f"{where}.delta") if delta is not None else None,
    )


@frozen
class XferRequest:
    """Device -> hub on dev/{id}/xfer/req: send me these chunks of this target."""

    target: str
    chunks: tuple[int, ...]
    encrypted: bool = False  # seal the chunks for the asking device

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "chunks": list(self.chunks), "encrypted": self.encrypted}


def decode_xfer_request(payload: bytes, max_chunks: int) -> XferRequest:
    where = "xfer/req"
    obj = load_json(payload, where)
    target = field_of(obj, "target", str, where)
    chunks = field_of(obj, "chunks", list, where)
    if not chunks or len(chunks) > max_chunks:
        raise MessageError(f"{where}.chunks: expected 1 to {max_chunks} indices, got {len(chunks)}")
    for i, index in enumerate(chunks):
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise MessageError(f"{where}.chunks[{i}]: expected an index >= 0, got {index!r}")
    encrypted = field_of(obj, "encrypted", bool, where) if "encrypted" in obj else False
    return XferRequest(target, tuple(chunks), encrypted)


@frozen
class XferChunk:
    """Hub -> device on dev/{id}/xfer/chunk: one chunk, base64 in JSON."""

    target: str
    index: int
    size: int  # total size of the target in bytes (of the plaintext)
    data: bytes  # the chunk, sealed when `key` is set
    key: bytes | None = None  # the transfer key wrapped for the device (HPKE), if encrypted

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "target": self.target,
            "index": self.index,
            "size": self.size,
            "data": base64.b64encode(self.data).decode("ascii"),
        }
        if self.key is not None:
            obj["key"] = base64.b64encode(self.key).decode("ascii")
        return obj


def decode_xfer_chunk(payload: bytes) -> XferChunk:
    where = "xfer/chunk"
    obj = load_json(payload, where)
    data = _b64(field_of(obj, "data", str, where), f"{where}.data")
    key = _b64(field_of(obj, "key", str, where), f"{where}.key") if "key" in obj else None
    index = field_of(obj, "index", int, where)
    size = field_of(obj, "size", int, where)
    if index < 0 or size < 0:
        raise MessageError(f"{where}: expected index and size >= 0, got ({index}, {size})")
    return XferChunk(field_of(obj, "target", str, where), index, size, data, key)


def _b64(raw: str, where: str) -> bytes:
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MessageError(f"{where}: expected base64, got {raw[:40]!r}") from exc


def encode(
    msg: Status | Batch | Confirm | Command | XferRequest | XferChunk,
    dump: Dump = compact_json,
) -> bytes:
    return dump_json(msg.to_json(), dump)
