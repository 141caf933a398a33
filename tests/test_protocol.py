"""The wire contract: messages, topics and chunk reassembly (pure logic, no broker)."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.errors import BundleRejected, MessageError
from edge_agent.protocol import SCHEMA_VERSION
from edge_agent.protocol.commands import canonical, decode_signed_command
from edge_agent.protocol.inputs import InputState, decode_inputs, describe
from edge_agent.protocol.messages import (
    Batch,
    Command,
    DeltaRef,
    ModelRef,
    Record,
    Status,
    XferChunk,
    XferRequest,
    decode_batch,
    decode_command,
    decode_status,
    decode_xfer_chunk,
    decode_xfer_request,
    encode,
)
from edge_agent.protocol.reasons import Reason
from edge_agent.protocol.records import WindowInputs, decode_checked_status
from edge_agent.protocol.topics import Topics, check_device_id
from edge_agent.protocol.transfer import CHUNK_SIZE, Reassembly, chunk_bounds, chunk_count

DECODERS: dict[str, Callable[[bytes], object]] = {
    "status": decode_checked_status,  # the envelope and its stats body, as the hub reads it
    "telemetry": lambda p: decode_batch(p, "telemetry"),
    "events": lambda p: decode_batch(p, "events"),
    "command": decode_command,
    "xfer/req": lambda p: decode_xfer_request(p, 8),
    "xfer/chunk": decode_xfer_chunk,
}


def wire(**obj: Any) -> bytes:
    return json.dumps(obj).encode()


INPUT = {  # one entry of a status's stats.inputs
    "name": "serial:/dev/ttyUSB0",
    "open": True,
    "lost": 0,
    "reopened": 0,
    "idle_s": 0.5,
    "no_input": False,
}


# ---- round trips ----------------------------------------------------------------------------
def test_status_round_trip() -> None:
    status = Status(
        device="pi-kitchen.01",
        online=True,
        boot=7,
        agent_version="0.1.0",
        profile="raspberry-pi-4",
        model=ModelRef("wine", 3),
        stats={"inferences": 12, "rejected": {"nan": 1}},
        ts=1700000000.5,
    )
    payload = encode(status)
    assert json.loads(payload)["v"] == SCHEMA_VERSION
    assert decode_status(payload) == status


def test_status_without_model_round_trip() -> None:
    status = Status(device="d1", online=False)
    assert decode_status(encode(status)) == status


# ---- the inputs' condition (status stats.inputs, telemetry window inputs) ------------------------
def test_input_state_from_a_sources_stats_and_back() -> None:
    stats = {"lines": 9, "open": False, "lost": 2, "reopened": 1, "idle_s": 75.0, "opened": 2}
    state = InputState.of("serial:/dev/ttyUSB0", stats, no_input_s=60)
    assert state == InputState("serial:/dev/ttyUSB0", False, 2, 1, 75.0, no_input=True)
    assert not InputState.of("x", stats, no_input_s=75.1).no_input
    assert InputState.of("x", stats, no_input_s=75).no_input  # at the limit: flagged
    assert not InputState.of("x", stats, no_input_s=0).no_input  # 0: never
    status = Status("d1", online=True, stats={"inputs": [state.to_json()]})
    back = decode_status(encode(status))
    assert decode_inputs(back.stats["inputs"], "inputs") == (state,)


def test_inputs_told_in_a_phrase_and_folded_for_a_window() -> None:
    ok = InputState("serial:a", True, idle_s=0.2)
    quiet = InputState("serial:b", True, idle_s=75.4, no_input=True)
    unplugged = InputState("serial:c", False, lost=3, reopened=2, idle_s=5.0)
    assert describe([]) == "-"
    assert describe([ok]) == "ok"
    assert describe([ok, quiet]) == "no input 75s"
    assert describe([unplugged]) == "input closed, port lost x3"
    assert describe([quiet, unplugged]) == "no input 75s, input closed, port lost x3"
    assert describe([quiet, unplugged], online=False) == "port lost x3"
    assert describe([ok, quiet], online=False) == "ok"
    assert WindowInputs.of([ok, quiet, unplugged]).to_body() == {
        "lost": 3,
        "reopened": 2,
        "idle_s": 75.4,
        "no_input": True,
    }
    assert WindowInputs.of([ok]).no_input is False


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(
    inputs=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=12,
    )
    | st.lists(
        st.fixed_dictionaries(
            {k: st.sampled_from([v, -1, "x", None, True, 1.5]) for k, v in INPUT.items()}
        ),
        max_size=3,
    )
)
def test_any_inputs_field_decodes_or_raises_only_message_error(inputs: Any) -> None:
    payload = json.dumps({**STATUS, "stats": {"inputs": inputs}}).encode()
    with contextlib.suppress(MessageError):
        states = decode_inputs(decode_status(payload).stats["inputs"], "inputs")
        assert all(s.lost >= 0 and s.idle_s >= 0 for s in states)


def test_batch_round_trip() -> None:
    batch = Batch(
        "d1",
        (
            Record(0, 0, 1.0, {"kind": "agg", "n": 3}),
            Record(0, 1, 2.5, {"event": "healthy", "reason": ""}),
            Record(4, 0, 3.0, {}),
        ),
    )
    assert decode_batch(encode(batch), "telemetry") == batch


def test_command_round_trip() -> None:
    cmd = Command(
        id="r-1-d1",
        kind="deploy",
        model=ModelRef("wine", 2),
        target="wine/2.zip",
        tuf_version=5,
        rollout="r-1",
    )
    assert decode_command(encode(cmd)) == cmd
    rollback = Command(id="c2", kind="rollback")
    assert decode_command(encode(rollback)) == rollback
    delta = DeltaRef(ModelRef("wine", 1), "deltas/wine/1-2.delta")
    with_delta = Command("r-1-d2", "deploy", ModelRef("wine", 2), "wine/2.zip", delta=delta)
    assert decode_command(encode(with_delta)) == with_delta


@pytest.mark.parametrize(
    ("base", "delta", "expected"),
    [
        (ModelRef("wine", 2), {"base": {"name": "wine", "version": 2}, "target": "d"}, "older"),
        (ModelRef("wine", 3), {"base": {"name": "iris", "version": 1}, "target": "d"}, "older"),
        (ModelRef("wine", 2), {"base": {"name": "wine"}, "target": "d"}, "delta.base: missing"),
        (ModelRef("wine", 2), {"base": {"name": "wine", "version": 1}}, "delta: missing"),
        (ModelRef("wine", 2), "wine@1", "delta: expected an object"),
    ],
)
def test_a_command_with_a_wrong_delta_says_where(
    base: ModelRef, delta: object, expected: str
) -> None:
    body = Command("c", "deploy", base, f"wine/{base.version}.zip").to_json()
    with pytest.raises(MessageError, match=expected):
        decode_command(json.dumps({"v": SCHEMA_VERSION, **body, "delta": delta}).encode())


def test_xfer_round_trips() -> None:
    req = XferRequest("wine/2.zip", (0, 3, 1))
    assert decode_xfer_request(encode(req), 8) == req
    chunk = XferChunk("wine/2.zip", 2, 200_000, bytes(range(256)) * 3)
    assert decode_xfer_chunk(encode(chunk)) == chunk


def test_empty_chunk_round_trip() -> None:
    chunk = XferChunk("empty.zip", 0, 0, b"")
    assert decode_xfer_chunk(encode(chunk)) == chunk


# ---- anything a device can send only ever raises MessageError --------------------------------
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
keys = st.sampled_from(
    [
        "v",
        "device",
        "online",
        "boot",
        "seq",
        "ts",
        "model",
        "name",
        "version",
        "records",
        "id",
        "kind",
        "target",
        "tuf_version",
        "rollout",
        "chunks",
        "index",
        "size",
        "data",
        "stats",
    ]
)
near_messages = st.dictionaries(keys, json_values | st.just(1), max_size=10)


def only_message_errors(decode: Callable[[bytes], object], payload: bytes) -> None:
    with contextlib.suppress(MessageError):
        decode(payload)


@pytest.mark.parametrize("kind", sorted(DECODERS))
@settings(
    max_examples=100,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(payload=st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_message_error(kind: str, payload: bytes) -> None:
    only_message_errors(DECODERS[kind], payload)


@pytest.mark.parametrize("kind", sorted(DECODERS))
@settings(
    max_examples=80,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(obj=near_messages)
def test_arbitrary_json_objects_only_raise_message_error(kind: str, obj: dict[str, Any]) -> None:
    """Near-miss messages are refused with MessageError, and what decodes encodes again."""
    obj.setdefault("v", SCHEMA_VERSION)
    try:
        msg = DECODERS[kind](json.dumps(obj).encode())
    except MessageError:
        return
    encode(msg)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", sorted(DECODERS))
@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 100_000,  # deeper than the JSON parser recurses
        b'{"v": ' + b"1" * 5000 + b"}",  # more digits than int() converts
        b'{"v": NaN}',
        b'{"v": 1, "ts": Infinity}',
        b"\xff\xfe",
        b"",
        b"null",
        b"[1]",
        b'"text"',
    ],
    ids=["deep", "huge-int", "nan", "infinity", "not-utf8", "empty", "null", "list", "string"],
)
def test_hostile_payloads_raise_message_error(kind: str, payload: bytes) -> None:
    with pytest.raises(MessageError):
        DECODERS[kind](payload)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_numbers_in_a_record_body_are_read_for_the_hub_to_refuse_that_record(
    constant: str,
) -> None:
    """Not JSON, but an older agent kept such bodies: the batch decodes, so the hub refuses
    that record alone, confirmed (its store cannot keep it: tests/test_hub_batching.py), and
    stores the others; in a record's envelope the batch is refused."""
    payload = b'{"v":1,"device":"d1","records":[{"boot":0,"seq":0,"ts":1.0,"x":%s}]}' % (
        constant.encode()
    )
    (record,) = decode_batch(payload, "telemetry").records
    assert repr(record.body["x"]) == repr(float(constant.lower().replace("infinity", "inf")))
    in_envelope = b'{"v":1,"device":"d1","records":[{"boot":0,"seq":0,"ts":%s}]}' % (
        constant.encode()
    )
    with pytest.raises(MessageError, match=r"telemetry.records\[0\].ts: expected a finite"):
        decode_batch(in_envelope, "telemetry")


# ---- each wrong field is named in the error ---------------------------------------------------
STATUS = {"v": 1, "device": "d1", "online": True, "boot": 1, "ts": 1.0}
RECORD = {"boot": 0, "seq": 0, "ts": 1.0}
BATCH = {"v": 1, "device": "d1", "records": [RECORD]}
COMMAND = {
    "v": 1,
    "id": "c1",
    "kind": "deploy",
    "model": {"name": "wine", "version": 2},
    "target": "wine/2.zip",
    "tuf_version": 3,
}
XREQ = {"v": 1, "target": "wine/2.zip", "chunks": [0, 1]}
XCHUNK = {"v": 1, "target": "wine/2.zip", "index": 0, "size": 3, "data": "YWJj"}


def without(obj: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != key}


def record(**over: Any) -> dict[str, Any]:
    return {**BATCH, "records": [{**RECORD, **over}]}


WRONG: list[tuple[str, str, dict[str, Any], list[str]]] = [
    # (id, decoder, payload, words the error must contain)
    ("status-no-v", "status", without(STATUS, "v"), ["status", "'v'"]),
    ("status-v2", "status", {**STATUS, "v": 2}, ["status.v", "1", "2"]),
    ("status-v-str", "status", {**STATUS, "v": "1"}, ["status.v", "int", "str"]),
    ("status-v-bool", "status", {**STATUS, "v": True}, ["status.v", "int", "bool"]),
    ("status-no-device", "status", without(STATUS, "device"), ["status", "'device'"]),
    ("status-device-slash", "status", {**STATUS, "device": "a/b"}, ["status.device", "'a/b'"]),
    ("status-online-int", "status", {**STATUS, "online": 1}, ["status.online", "bool", "int"]),
    ("status-boot-bool", "status", {**STATUS, "boot": True}, ["status.boot", "int", "bool"]),
    ("status-boot-str", "status", {**STATUS, "boot": "3"}, ["status.boot", "int", "str"]),
    ("status-ts-str", "status", {**STATUS, "ts": "now"}, ["status.ts", "str"]),
    ("status-ts-bool", "status", {**STATUS, "ts": True}, ["status.ts", "bool"]),
    ("status-ts-huge", "status", {**STATUS, "ts": 10**400}, ["status.ts", "finite"]),
    ("status-stats-list", "status", {**STATUS, "stats": []}, ["status.stats", "dict", "list"]),
    (
        "status-model-str",
        "status",
        {**STATUS, "model": "wine@1"},
        ["status.model", "object", "str"],
    ),
    (
        "status-model-version-str",
        "status",
        {**STATUS, "model": {"name": "wine", "version": "1"}},
        ["status.model.version", "int", "str"],
    ),
    (
        "status-model-version-0",
        "status",
        {**STATUS, "model": {"name": "wine", "version": 0}},
        ["status.model", "version", ">= 1", "0"],
    ),
    (
        "status-model-name-upper",
        "status",
        {**STATUS, "model": {"name": "Wine", "version": 1}},
        ["status.model", "model name", "'Wine'"],
    ),
    (
        "status-inputs-dict",
        "status",
        {**STATUS, "stats": {"inputs": {"name": "serial"}}},
        ["status.stats.inputs", "list", "dict"],
    ),
    (
        "status-input-lost-neg",
        "status",
        {**STATUS, "stats": {"inputs": [{**INPUT, "lost": -1}]}},
        ["status.stats.inputs[0].lost", "0 or more", "-1"],
    ),
    (
        "status-input-open-int",
        "status",
        {**STATUS, "stats": {"inputs": [INPUT, {**INPUT, "open": 1}]}},
        ["status.stats.inputs[1].open", "bool", "int"],
    ),
    (
        "status-input-idle-str",
        "status",
        {**STATUS, "stats": {"inputs": [{**INPUT, "idle_s": "75"}]}},
        ["status.stats.inputs[0].idle_s", "str"],
    ),
    (
        "status-input-no-name",
        "status",
        {**STATUS, "stats": {"inputs": [without(INPUT, "name")]}},
        ["status.stats.inputs[0]", "'name'"],
    ),
    ("batch-no-records", "telemetry", without(BATCH, "records"), ["telemetry", "'records'"]),
    ("batch-records-dict", "telemetry", {**BATCH, "records": {}}, ["telemetry.records", "list"]),
    ("batch-record-int", "telemetry", {**BATCH, "records": [5]}, ["telemetry.records[0]", "int"]),
    ("batch-device-plus", "drift", {**BATCH, "device": "+"}, ["drift.device", "'+'"]),
    ("batch-device-hash", "events", {**BATCH, "device": "#"}, ["events.device", "'#'"]),
    (
        "batch-device-long",
        "telemetry",
        {**BATCH, "device": "d" * 65},
        ["telemetry.device", "1-64"],
    ),
    ("record-no-seq", "telemetry", {**BATCH, "records": [without(RECORD, "seq")]}, ["'seq'"]),
    ("record-seq-neg", "telemetry", record(seq=-1), ["telemetry.records[0]", "seq", "-1"]),
    ("record-boot-neg", "telemetry", record(boot=-2), ["telemetry.records[0]", "boot", "-2"]),
    ("record-boot-bool", "telemetry", record(boot=False), ["records[0].boot", "int", "bool"]),
    ("record-seq-float", "telemetry", record(seq=1.5), ["records[0].seq", "int", "float"]),
    ("record-ts-str", "telemetry", record(ts="1"), ["records[0].ts", "str"]),
    ("record-ts-huge", "telemetry", record(ts=10**400), ["records[0].ts", "finite"]),
    ("record-seq-huge", "telemetry", record(seq=2**64), ["records[0]", "seq", str(2**64)]),
    ("cmd-no-id", "command", without(COMMAND, "id"), ["command", "'id'"]),
    ("cmd-kind", "command", {**COMMAND, "kind": "format-disk"}, ["command.kind", "deploy"]),
    ("cmd-kind-int", "command", {**COMMAND, "kind": 1}, ["command.kind", "str", "int"]),
    ("cmd-target-int", "command", {**COMMAND, "target": 5}, ["command.target", "str"]),
    ("cmd-rollout-list", "command", {**COMMAND, "rollout": []}, ["command.rollout", "list"]),
    (
        "cmd-tuf-bool",
        "command",
        {**COMMAND, "tuf_version": True},
        ["command.tuf_version", "int", "bool"],
    ),
    ("cmd-deploy-no-target", "command", without(COMMAND, "target"), ["deploy", "target"]),
    (
        "cmd-model-name-missing",
        "command",
        {**COMMAND, "model": {"version": 2}},
        ["command.model", "'name'"],
    ),
    ("xreq-no-target", "xfer/req", without(XREQ, "target"), ["xfer/req", "'target'"]),
    ("xreq-chunks-empty", "xfer/req", {**XREQ, "chunks": []}, ["xfer/req.chunks", "1 to 8", "0"]),
    (
        "xreq-chunks-too-many",
        "xfer/req",
        {**XREQ, "chunks": list(range(9))},
        ["xfer/req.chunks", "1 to 8", "9"],
    ),
    ("xreq-chunk-neg", "xfer/req", {**XREQ, "chunks": [0, -1]}, ["xfer/req.chunks[1]", "-1"]),
    ("xreq-chunk-bool", "xfer/req", {**XREQ, "chunks": [True]}, ["xfer/req.chunks[0]", "True"]),
    ("xreq-chunk-str", "xfer/req", {**XREQ, "chunks": ["0"]}, ["xfer/req.chunks[0]", "'0'"]),
    ("xchunk-bad-b64", "xfer/chunk", {**XCHUNK, "data": "!!!"}, ["xfer/chunk.data", "base64"]),
    ("xchunk-b64-padding", "xfer/chunk", {**XCHUNK, "data": "YWJ"}, ["xfer/chunk.data", "base64"]),
    ("xchunk-non-ascii", "xfer/chunk", {**XCHUNK, "data": "é"}, ["xfer/chunk.data", "base64"]),
    ("xchunk-data-int", "xfer/chunk", {**XCHUNK, "data": 5}, ["xfer/chunk.data", "str", "int"]),
    ("xchunk-index-neg", "xfer/chunk", {**XCHUNK, "index": -1}, ["xfer/chunk", "index", "-1"]),
    ("xchunk-size-neg", "xfer/chunk", {**XCHUNK, "size": -3}, ["xfer/chunk", "size", "-3"]),
    ("xchunk-index-bool", "xfer/chunk", {**XCHUNK, "index": True}, ["xfer/chunk.index", "bool"]),
    ("xchunk-no-target", "xfer/chunk", without(XCHUNK, "target"), ["xfer/chunk", "'target'"]),
]


def decode_for(kind: str) -> Callable[[bytes], object]:
    return DECODERS.get(kind) or (lambda p: decode_batch(p, kind))


@pytest.mark.parametrize(
    ("kind", "obj", "words"), [w[1:] for w in WRONG], ids=[w[0] for w in WRONG]
)
def test_wrong_field_is_named(kind: str, obj: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(MessageError) as info:
        decode_for(kind)(json.dumps(obj).encode())
    text = str(info.value)
    for word in words:
        assert word in text, f"{word!r} not in {text!r}"


def test_the_good_payloads_of_the_wrong_field_table_decode() -> None:
    """The table above only fails because of the one field it changes."""
    decode_status(wire(**STATUS))
    decode_status(wire(**{**STATUS, "stats": {"inputs": [INPUT]}}))
    decode_batch(wire(**BATCH), "telemetry")
    decode_command(wire(**COMMAND))
    decode_xfer_request(wire(**XREQ), 8)
    assert decode_xfer_chunk(wire(**XCHUNK)).data == b"abc"


def test_bad_json_error_says_what_arrived() -> None:
    with pytest.raises(MessageError, match=r"^status: expected JSON, got b'\{not json'"):
        decode_status(b"{not json")
    with pytest.raises(MessageError, match="status: expected a JSON object, got list"):
        decode_status(b"[]")


def test_record_body_keeps_extra_fields() -> None:
    batch = decode_batch(wire(**record(event="rejected", reason="tampered")), "events")
    assert batch.records[0].body == {"event": "rejected", "reason": "tampered"}


def test_chunk_data_is_base64_of_the_bytes() -> None:
    payload = encode(XferChunk("t", 0, 3, b"\x00\xff\x10"))
    assert json.loads(payload)["data"] == base64.b64encode(b"\x00\xff\x10").decode()


# ---- ModelRef --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("wine@2", ModelRef("wine", 2)),
        ("breast_cancer.v2-int8@10", ModelRef("breast_cancer.v2-int8", 10)),
    ],
)
def test_model_ref_parse(text: str, ref: ModelRef) -> None:
    assert ModelRef.parse(text) == ref
    assert str(ref) == text


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("notamodel", ["NAME@VERSION", "'notamodel'"]),
        ("wine@", ["NAME@VERSION", "'wine@'"]),
        ("wine@x", ["NAME@VERSION", "'wine@x'"]),
        ("wine@-1", ["NAME@VERSION", "'wine@-1'"]),
        ("wine@1.5", ["NAME@VERSION", "'wine@1.5'"]),
        ("wine@²", ["NAME@VERSION", "'wine@²'"]),  # a digit to str.isdigit, not to int()
        ("wine@" + "9" * 5000, ["NAME@VERSION"]),
        ("wine@0", ["model version", ">= 1", "0"]),
        ("@1", ["model name", "''"]),
        ("Wine@1", ["model name", "'Wine'"]),
        ("wi ne@1", ["model name", "'wi ne'"]),
        ("wine\n@1", ["model name"]),
        ("a" * 65 + "@1", ["model name", "1-64"]),
    ],
)
def test_model_ref_parse_rejects(text: str, words: list[str]) -> None:
    with pytest.raises(MessageError) as info:
        ModelRef.parse(text)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("version", [0, -1, True, 1.0, "1"])
def test_model_ref_rejects_bad_versions(version: Any) -> None:
    with pytest.raises(MessageError, match="model version: expected an integer >= 1"):
        ModelRef("wine", version)


# ---- topics ----------------------------------------------------------------------------------
def test_topic_names() -> None:
    t = Topics()
    assert t.device("pi-1", "status") == "edgefleet/dev/pi-1/status"
    assert t.device("pi-1", "xfer/chunk") == "edgefleet/dev/pi-1/xfer/chunk"
    assert t.any_device("telemetry") == "edgefleet/dev/+/telemetry"
    assert t.tuf("root/2.json") == "edgefleet/fleet/tuf/root/2.json"
    assert t.tuf_all == "edgefleet/fleet/tuf/#"
    assert Topics("site/a").device("x", "cmd") == "site/a/dev/x/cmd"


@pytest.mark.parametrize(
    "kind", ["status", "telemetry", "drift", "events", "xfer/req", "cmd", "xfer/chunk"]
)
def test_parse_device_topic_round_trip(kind: str) -> None:
    t = Topics("plant7")
    assert t.parse_device_topic(t.device("pi_4.b-2", kind)) == ("pi_4.b-2", kind)


@pytest.mark.parametrize(
    ("topic", "words"),
    [
        ("other/dev/d1/status", ["expected edgefleet/dev/<id>/<kind>", "'other/dev/d1/status'"]),
        ("edgefleet/dev/d1/weather", ["expected kind", "'weather'"]),
        ("edgefleet/dev/d1/status/extra", ["expected kind", "'status/extra'"]),
        ("edgefleet/dev/d1", ["expected kind", "''"]),
        ("edgefleet/dev/+/status", ["'edgefleet/dev/+/status'", "'+'"]),
        ("edgefleet/dev/#", ["'#'"]),
        ("edgefleet/dev//status", ["1-64", "''"]),
    ],
)
def test_parse_device_topic_rejects(topic: str, words: list[str]) -> None:
    with pytest.raises(MessageError) as info:
        Topics().parse_device_topic(topic)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("good", ["a", "pi-4", "Pi_4.kitchen-01", "0", "d" * 64])
def test_device_ids_accepted(good: str) -> None:
    assert check_device_id(good) == good


@pytest.mark.parametrize(
    "bad",
    ["", "a/b", "+", "#", "a+", "dev#1", "d" * 65, "-lead", ".hidden", "has space", "é", "abc\n"],
)
def test_device_ids_rejected(bad: str) -> None:
    with pytest.raises(MessageError) as info:
        check_device_id(bad, "config device.id")
    text = str(info.value)
    assert text.startswith("config device.id: expected 1-64 characters")
    assert repr(bad) in text


@pytest.mark.parametrize("bad", [None, 5, b"pi"])
def test_device_id_must_be_a_string(bad: object) -> None:
    with pytest.raises(MessageError, match="device id: expected"):
        check_device_id(bad)


def test_device_topic_refuses_a_wildcard_id() -> None:
    with pytest.raises(MessageError, match=r"'\+'"):
        Topics().device("+", "cmd")


@pytest.mark.parametrize("prefix", ["", "a/", "/a", "a//b", "a/+", "#", "a b", "edge\n"])
def test_bad_topic_prefix(prefix: str) -> None:
    with pytest.raises(MessageError) as info:
        Topics(prefix)
    assert str(info.value).startswith("topic prefix: expected levels")
    assert str(info.value).endswith(f"got {prefix!r}")


# ---- chunk reassembly ------------------------------------------------------------------------
def blob(size: int) -> bytes:
    return bytes((i * 7 + 3) % 251 for i in range(size))


def chunks_of(data: bytes, chunk_size: int) -> list[bytes]:
    return [data[i : i + chunk_size] for i in range(0, max(len(data), 1), chunk_size)]


def test_chunk_arithmetic() -> None:
    assert chunk_count(0) == 1
    assert chunk_count(CHUNK_SIZE) == 1
    assert chunk_count(CHUNK_SIZE + 1) == 2
    assert chunk_bounds(1, CHUNK_SIZE + 10) == (CHUNK_SIZE, CHUNK_SIZE + 10)


@settings(max_examples=60, derandomize=True, database=None, deadline=None)
@given(size=st.integers(0, 400), chunk_size=st.integers(1, 64), data=st.data())
def test_chunks_in_any_order_with_duplicates(size: int, chunk_size: int, data: Any) -> None:
    payload = blob(size)
    parts = chunks_of(payload, chunk_size)
    order = data.draw(st.permutations(range(len(parts))))
    dupes = data.draw(st.lists(st.sampled_from(range(len(parts))), max_size=5))
    r = Reassembly("t", size, chunk_size)
    new = [r.accept(i, size, parts[i]) for i in [*order, *dupes]]
    assert new == [True] * len(parts) + [False] * len(dupes)
    assert r.complete
    r.check_complete()
    assert r.to_request(0.0, 4, 1.0) == []


def test_duplicate_chunk_is_not_new() -> None:
    r = Reassembly("t", 10, 4)
    assert r.accept(1, 10, b"4567")
    assert not r.accept(1, 10, b"4567")
    assert r.received == 1


def test_wrong_length_chunk_is_dropped_and_asked_again() -> None:
    r = Reassembly("t", 10, 4)
    assert r.to_request(now=0.0, window=3, retry_after=30.0) == [0, 1, 2]
    assert not r.accept(1, 10, b"45")  # short
    assert not r.accept(2, 10, b"8")  # the last chunk is 2 bytes, not 1
    assert r.received == 0
    # asked again at once, without waiting for retry_after
    assert r.to_request(now=1.0, window=3, retry_after=30.0) == [1, 2]
    assert r.accept(2, 10, b"89")
    assert r.to_request(now=2.0, window=3, retry_after=30.0) == []


def test_incomplete_assembly_is_truncated() -> None:
    r = Reassembly("wine/2.zip", 10, 4)
    r.accept(0, 10, b"0123")
    with pytest.raises(BundleRejected) as info:
        r.check_complete()
    assert info.value.reason == "truncated"
    assert "wine/2.zip: 1 of 3 chunks arrived" in str(info.value)


@pytest.mark.parametrize(("announced", "reason"), [(11, "oversized"), (9, "truncated")])
def test_announced_size_differing_from_signed_size(announced: int, reason: str) -> None:
    r = Reassembly("wine/2.zip", 10, 4)
    with pytest.raises(BundleRejected) as info:
        r.accept(0, announced, b"0123")
    assert info.value.reason == reason
    assert "signed length is 10 bytes" in str(info.value)
    assert f"announced {announced}" in str(info.value)
    assert r.received == 0


@pytest.mark.parametrize("index", [3, 100, -1])
def test_index_past_the_end_is_oversized(index: int) -> None:
    r = Reassembly("t", 10, 4)
    with pytest.raises(BundleRejected) as info:
        r.accept(index, 10, b"0123")
    assert info.value.reason == "oversized"
    assert f"chunk index {index}" in str(info.value)


def test_to_request_respects_the_window_and_retries_stale_chunks() -> None:
    r = Reassembly("t", 10 * 4, 4)  # 10 chunks
    assert r.to_request(now=0.0, window=4, retry_after=5.0) == [0, 1, 2, 3]
    assert r.to_request(now=1.0, window=4, retry_after=5.0) == []  # window full
    r.accept(0, 40, b"xxxx")
    r.accept(1, 40, b"xxxx")
    assert r.to_request(now=2.0, window=4, retry_after=5.0) == [4, 5]
    # 2 and 3 were asked at 0.0 and are stale at 5.0; 4 and 5 (asked at 2.0) are not
    assert r.to_request(now=5.0, window=4, retry_after=5.0) == [2, 3]
    assert r.to_request(now=6.9, window=4, retry_after=5.0) == []
    assert sorted(r.to_request(now=7.0, window=4, retry_after=5.0)) == [4, 5]


def test_to_request_never_asks_for_what_arrived() -> None:
    r = Reassembly("t", 12, 4)
    r.accept(1, 12, b"xxxx")
    assert r.to_request(now=0.0, window=8, retry_after=1.0) == [0, 2]


@settings(max_examples=80, derandomize=True, database=None, deadline=None)
@given(
    chunks=st.integers(1, 40),
    window=st.integers(1, 8),
    steps=st.lists(
        st.tuples(st.sampled_from(["ask", "good", "bad", "wait"]), st.integers(0, 39)),
        max_size=120,
    ),
)
def test_to_request_asks_what_a_scan_from_the_first_chunk_would(
    chunks: int, window: int, steps: list[tuple[str, int]]
) -> None:
    """Whatever arrives, fails or goes stale, and in whatever order: the chunks asked for are
    the lowest ones neither had nor in flight, as a scan from chunk 0 finds them (the
    reassembly keeps its place instead of scanning from 0 each time)."""
    r = Reassembly("t", chunks * 4, 4)
    have: set[int] = set()
    asked: dict[int, float] = {}
    now = 0.0
    for op, index in steps:
        index %= chunks
        if op == "wait":
            now += 1.0
        elif op == "good":
            r.accept(index, chunks * 4, b"abcd")
            asked.pop(index, None)
            have.add(index)
        elif op == "bad":
            r.accept(index, chunks * 4, b"ab" if index < chunks - 1 else b"abcde")
            asked.pop(index, None)
        else:
            for i in [i for i, at in asked.items() if now - at >= 2.0]:
                del asked[i]
            free = [i for i in range(chunks) if i not in have and i not in asked]
            expected = free[: max(0, window - len(asked))]
            assert r.to_request(now, window, 2.0) == expected
            asked.update(dict.fromkeys(expected, now))
    assert r.received == len(have)


def test_bitmap_bits() -> None:
    r = Reassembly("t", 10 * 4, 4)  # 10 chunks -> 2 bytes
    assert r.bitmap() == b"\x00\x00"
    for index in (0, 3, 9):
        r.accept(index, 40, b"abcd")
    assert r.bitmap() == bytes([0b0000_1001, 0b0000_0010])
    assert not r.complete
    for index in range(10):
        r.accept(index, 40, b"abcd")
    assert r.bitmap() == bytes([0xFF, 0b11])
    assert r.complete


def test_chunks_in_flight_are_not_stale_while_others_keep_arriving() -> None:
    r = Reassembly("t", 10 * 4, 4)  # 10 chunks
    assert r.to_request(now=0.0, window=4, retry_after=5.0) == [0, 1, 2, 3]
    r.accept(0, 40, b"xxxx")  # at 4.0: the path is slow, not broken
    assert r.to_request(now=5.0, window=4, retry_after=5.0, progressed=4.0) == [4]
    assert r.to_request(now=8.9, window=4, retry_after=5.0, progressed=4.0) == []
    # nothing arrived for 5 s: what is still out is asked for again
    assert sorted(r.to_request(now=9.0, window=4, retry_after=5.0, progressed=4.0)) == [1, 2, 3]
    assert r.reasked == 3


# ---- signed commands: the envelope ---------------------------------------------------------------
SIGNED_BODY = {
    **without(COMMAND, "v"),
    "device": "d1",
    "counter": 7,
    "expires": "2030-01-01T00:00:00Z",
}
SIGNED = {"v": 1, "signed": SIGNED_BODY, "signatures": [{"keyid": "ab12", "sig": "cd34"}]}


def test_a_signed_command_round_trips_and_signs_canonical_bytes() -> None:
    cmd = decode_signed_command(wire(**SIGNED))
    assert cmd.device == "d1" and cmd.counter == 7 and cmd.signatures == {"ab12": "cd34"}
    assert decode_signed_command(cmd.to_bytes()) == cmd
    assert cmd.payload() == canonical(SIGNED_BODY)
    assert canonical({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


@pytest.mark.parametrize(
    ("obj", "words"),
    [
        (COMMAND, ["unsigned", '"signed"', "id, kind"]),
        ({**SIGNED, "signatures": []}, ["unsigned", "got none"]),
    ],
    ids=["plain-command", "no-signature"],
)
def test_a_command_without_signatures_is_refused_as_unsigned(
    obj: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(BundleRejected) as info:
        decode_signed_command(json.dumps(obj).encode())
    assert info.value.reason == Reason.UNSIGNED
    for word in words:
        assert word in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("obj", "words"),
    [
        ({**SIGNED, "signed": []}, ["command.signed", "dict", "list"]),
        ({**SIGNED, "signatures": {}}, ["command.signatures", "list", "dict"]),
        ({**SIGNED, "signatures": ["ab"]}, ["command.signatures[0]", "object", "str"]),
        (
            {**SIGNED, "signatures": [{"keyid": "XYZ", "sig": "cd"}]},
            ["command.signatures[0].keyid", "hex", "'XYZ'"],
        ),
        ({**SIGNED, "signatures": [{"keyid": "ab"}] * 9}, ["at most 8", "9"]),
        ({**SIGNED, "signed": {**SIGNED_BODY, "counter": 0}}, ["command.signed.counter", ">= 1"]),
        (
            {**SIGNED, "signed": {**SIGNED_BODY, "expires": "tomorrow"}},
            ["command.signed.expires", "UTC time", "'tomorrow'"],
        ),
        ({**SIGNED, "signed": without(SIGNED_BODY, "device")}, ["command.signed", "'device'"]),
        (
            {**SIGNED, "signed": {**SIGNED_BODY, "kind": "format-disk"}},
            ["command.kind", "format-disk"],
        ),
    ],
    ids=[
        "signed-list",
        "signatures-dict",
        "signature-str",
        "keyid-not-hex",
        "too-many",
        "counter-0",
        "expires-text",
        "no-device",
        "bad-kind",
    ],
)
def test_a_malformed_signed_command_names_the_field(obj: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(MessageError) as info:
        decode_signed_command(json.dumps(obj).encode())
    assert not isinstance(info.value, BundleRejected)
    for word in words:
        assert word in str(info.value), str(info.value)
