"""JSON the store keeps is JSON on every engine: NaN and Infinity are refused the same way on
SQLite as PostgreSQL refuses them, with an error that says what and where, and nothing of the
write is kept."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cloud_hub.store.database import Store, dumps
from cloud_hub.store.errors import StoreError
from cloud_hub.store.url import store_url


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
    # keys in their order (a drift report's features in the card's order, as devices send them)
    assert dumps({"b": 1, "a": [0.5, None, "x"]}) == '{"b": 1, "a": [0.5, null, "x"]}'
    with pytest.raises(ValueError, match="got nan at the top"):
        dumps(math.nan)
