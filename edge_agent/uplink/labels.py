"""Ground truth a device takes in locally and sends to the hub (pure).

With `[results] labels = true` the agent subscribes, on the results feed's local broker, to
`labels_topic` (default ``edgefleet/local/{device_id}/labels``): whatever learns the true answer
for a row (an operator's button, a later sensor, a Node-RED flow) publishes it there, by the
row's prediction id from the results feed. A message is JSON, one of::

    {"prediction": "pi-01/3/1520", "label": 2}
    [{"prediction": "pi-01/3/1520", "label": 2}, ...]
    {"labels": [{"prediction": "pi-01/3/1520", "label": 2}, ...]}

(at most MAX_LABELS labels). The agent keeps it as a `labels` record (edge_agent.protocol.records
Labels) in its buffer, like any record: it reaches the hub on dev/{id}/labels exactly once, across
outages. The hub judges each label (its id, its value, whether it is this device's); the agent
only refuses a message that is not such JSON, and counts it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from edge_agent.errors import MessageError
from edge_agent.protocol.records import MAX_LABELS, Labels


def local_labels(payload: bytes, where: str = "local labels") -> Labels:
    """The labels of one local message; MessageError saying what was expected otherwise."""
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MessageError(
            f"{where}: expected JSON labels, got {payload[:60]!r} ({type(exc).__name__})"
        ) from exc
    if isinstance(obj, list):
        items = obj
    elif isinstance(obj, Mapping) and "labels" in obj:
        return Labels.from_body(obj, where)
    elif isinstance(obj, Mapping) and "prediction" in obj:
        items = [obj]
    else:
        raise MessageError(
            f"{where}: expected {{prediction, label}}, a list of them or {{labels: [...]}}, "
            f"got {payload[:60]!r}"
        )
    if len(items) > MAX_LABELS:
        raise MessageError(f"{where}: expected at most {MAX_LABELS} labels, got {len(items)}")
    return Labels.from_body({"labels": items}, where)
