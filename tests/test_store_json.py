"""JSON the store keeps is JSON on every engine: NaN and Infinity are refused the same way on
SQLite as PostgreSQL refuses them, with an error that says what and where, and nothing of the
write is kept."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cloud_hub.store.database import Ingest, Store, dumps
from cloud_hub.store.errors import StoreError, Unstorable
from cloud_hub.store.url import store_url
from edge_agent.protocol.messages import Batch, Record


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_number_is_refused_saying_where(
    each_store: str, tmp_path: Path, bad: float
) -> None:
    store = Store(store_url(tmp_path))
    try:
        with pytest.raises(StoreError) as raised:
            store.set_state("gates", {"wave": [1.0, {"max_psi": bad}]})
        error = raised.value
        assert error.reason == "not-finite"
        assert f"got {bad} at wave[1].max_psi" in str(error)
        assert "NaN and Infinity cannot be stored" in str(error)
        assert store.get_state("gates") is None  # nothing of it was kept
        with pytest.raises(StoreError, match="NaN and Infinity cannot be stored"):
            store.add_rollout("r-1", "running", {"created": bad})
        assert store.rollouts() == []
        store.set_state("gates", {"wave": [1.0, {"max_psi": 0.25}]})  # a finite one is kept
        assert store.get_state("gates") == {"wave": [1.0, {"max_psi": 0.25}]}
    finally:
        store.engine.dispose()


def test_dumps_is_plain_json_for_finite_values() -> None:
    # keys in their order (a drift report's features in the card's order, as devices send them),
    # compact (cloud_hub.jsoncodec), and what orjson alone would write differently as json does
    assert dumps({"b": 1, "a": [0.5, None, "x"]}) == '{"b":1,"a":[0.5,null,"x"]}'
    assert dumps({"s": "é", "n": 2**70}) == '{"s":"\\u00e9","n":1180591620717411303424}'
    with pytest.raises(ValueError, match="got nan at the top"):
        dumps(math.nan)


def test_ingest_names_every_record_it_cannot_keep_and_writes_nothing(
    each_store: str, tmp_path: Path
) -> None:
    """Found before the statement runs, so the hub can refuse those records and store the rest
    (cloud_hub.hub): Unstorable maps each one's key to where its number is."""
    store = Store(store_url(tmp_path))
    try:
        ok = Record(1, 0, 1.0, {"event": "healthy"})
        items: list[Ingest] = [
            ("events", Batch("pi-1", (ok, Record(1, 1, 2.0, {"x": math.inf})))),
            ("telemetry", Batch("pi-2", (Record(1, 7, 3.0, {"a": {"b": [1.0, -math.inf]}}),))),
        ]
        with pytest.raises(Unstorable) as raised:
            store.ingest(items)
        assert raised.value.reason == "not-finite"
        assert raised.value.records == {
            ("events", "pi-1", 1, 1): "stored JSON: expected finite numbers, got inf at x",
            ("telemetry", "pi-2", 1, 7): "stored JSON: expected finite numbers, got -inf at a.b[1]",
        }
        assert "2 records; the first, events record of pi-1 (1, 1)" in str(raised.value)
        assert store.count("events", "pi-1") == 0 and store.devices() == []  # nothing written
        assert store.ingest([("events", Batch("pi-1", (ok,)))]) == {"events": 1}
    finally:
        store.engine.dispose()
