"""A buffered record goes out as the JSON text its body was kept as (`Pending.wire`,
`encode_records`): never parsed and dumped again on the device. What the hub decodes from it
must be what `encode(Batch(...))` of the same records gives, for every body a buffer can hold,
including one kept by an older agent (json.dumps' spaced form)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from edge_agent.errors import MessageError
from edge_agent.protocol.messages import (
    Batch,
    Record,
    body_json,
    decode_batch,
    encode,
    encode_records,
    record_json,
    spans_of,
)
from edge_agent.uplink.buffer import Buffer

BODIES: list[dict[str, Any]] = [
    {},
    {"i": 0},
    {"event": "installed", "model": {"name": "wine", "version": 2}, "note": "tab\tnew\nline"},
    {"window_s": 2.0, "latency_ms": {"p50": 0.0312, "p99": 1e-7}, "big": 2**62, "neg": -1.5},
    {"text": "é ü ☃ \U0001f600", "quote": '"\\', "list": [1, 2.5, None, True, "x"]},
]


@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
@pytest.mark.parametrize("kept", ["compact", "spaced"])
def test_a_record_spliced_from_its_kept_text_decodes_as_the_record(
    body: dict[str, Any], kept: str
) -> None:
    text = body_json(body, "test") if kept == "compact" else json.dumps(body)  # older agents'
    record = Record(3, 41, 1733400000.123456, body)
    wire = encode_records("dev-1", [record_json(3, 41, record.ts, text)])
    assert decode_batch(wire, "telemetry") == decode_batch(encode(Batch("dev-1", (record,))), "x")
    assert json.loads(wire) == json.loads(encode(Batch("dev-1", (record,))))


def test_what_the_buffer_sends_is_what_was_appended(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b", boot=2, group_rows=4, group_window_s=60)
    appended = [buf.append("telemetry", body, ts=100.0 + i) for i, body in enumerate(BODIES)]
    taken = buf.take(100, set())
    batch = decode_batch(encode_records("dev-1", [p.wire() for p in taken]), "telemetry")
    assert batch == Batch("dev-1", tuple(appended))
    assert [p.record for p in taken] == appended
    assert spans_of(taken) == spans_of(appended) == ((2, 0, len(BODIES) - 1),)
    buf.close()


@pytest.mark.parametrize(
    ("body", "ts", "expected"),
    [
        ({"x": math.nan}, None, "a telemetry record: expected a body JSON can hold"),
        ({"x": math.inf}, None, "a telemetry record: expected a body JSON can hold"),
        ({"x": object()}, None, "a telemetry record: expected a body JSON can hold"),
        ({"x": 1}, math.nan, "a telemetry record: expected a finite timestamp, got nan"),
    ],
)
def test_a_body_json_cannot_hold_is_refused_at_append_and_uses_no_seq(
    tmp_path: Path, body: dict[str, Any], ts: float | None, expected: str
) -> None:
    """Kept, such a record would stop every batch behind it from being encoded; refused at the
    door it costs nothing: no line in the buffer's files, no seq (the next record's is the same)."""
    buf = Buffer(tmp_path / "b", boot=1, group_rows=8, group_window_s=60)
    with pytest.raises(MessageError) as caught:
        buf.append("telemetry", body, ts=ts)
    assert str(caught.value).startswith(expected)
    assert buf.pending() == 0 and not any(p.stat().st_size for p in buf.path.iterdir())
    assert buf.append("telemetry", {"ok": True}).seq == 0
    buf.close()


def test_the_agent_counts_a_body_json_cannot_hold_as_unkept_and_keeps_the_next(
    tmp_path: Path,
) -> None:
    from cloud_hub.rollout.operations import enroll_device, init_hub
    from edge_agent.agent import Agent
    from edge_agent.config import load_config

    init_hub(tmp_path / "hub")
    enroll_device(tmp_path / "hub", "pi-01", tmp_path / "state-pi-01")
    path = tmp_path / "agent.toml"
    path.write_text('[device]\nid = "pi-01"\n')
    agent = Agent(load_config(path))
    try:
        agent.keep("telemetry", {"x": math.nan})
        assert agent.buffer.pending() == 0
        assert agent.health.condition().unkept == {"telemetry": 1}
        agent.keep("telemetry", {"x": 1.5})
        assert [p.record.body for p in agent.buffer.take(10, set())] == [{"x": 1.5}]
    finally:
        agent.buffer.close()
