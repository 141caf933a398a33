"""Ground truth, pure: what a label is, what happens to it, and what a joined one holds.

A label names the prediction it is about by id (`{device}/{boot}/{row}`,
edge_agent.protocol.ids) and carries the true value: a class label (a string or an integer) or a
number. It comes from a device's `labels` topic, `POST /api/labels` or `edgehub labels import`;
the store (cloud_hub.quality.ledger) joins it to the prediction the device made for that row,
which the device's telemetry windows carry (`WindowRows`), or a sampled raw row.

What happens to each label is counted per source and reason (OUTCOMES):

- `joined`: joined to the stored prediction (at once, or later for a late one);
- `late`: its prediction's window is not stored yet (the device may still hold it in its
  buffer): kept pending, and joined when the window arrives (at the hub's next join pass); a
  late label that later joins is counted `joined` then too;
- `partial`: the row is stored, but not its prediction (the device sends ids without
  predictions: `[telemetry] predictions = false`, and no raw sample of the row): kept, left out
  of the metrics;
- `duplicate`: a label for this prediction is stored already (or came earlier in the same
  batch): the first is kept, this one dropped;
- `unknown`: the id's device is not known to the hub (dropped at once), or no stored window
  covers the row LABEL_GRACE_S after the label arrived (kept, marked unknown; a window that still
  comes later joins it);
- `foreign`: a device sent a label for another device's prediction (a device speaks only for
  itself): dropped;
- `malformed`: the id is not DEVICE/BOOT/ROW, or the value is not a label (null, true/false, an
  empty string, a number that is not finite): dropped.
"""

from __future__ import annotations

import math

from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.ids import prediction_id
from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.records import Scalar

JOINED, LATE, PARTIAL, DUPLICATE = "joined", "late", "partial", "duplicate"
UNKNOWN, FOREIGN, MALFORMED = "unknown", "foreign", "malformed"
OUTCOMES = (JOINED, LATE, PARTIAL, DUPLICATE, UNKNOWN, FOREIGN, MALFORMED)
# the states a kept label is in: waiting for its window, joined, without prediction, never found
PENDING = "pending"
STATES = (PENDING, JOINED, PARTIAL, UNKNOWN)
LABEL_GRACE_S = 24 * 3600.0  # a pending label whose row no window covers by then is unknown
MAX_LABEL_CHARS = 200  # a class label longer than this is not one

# where labels come from (the `source` of a label and of its counts)
FROM_DEVICE, FROM_API, FROM_CSV = "device", "api", "csv"


@frozen
class JoinedLabel:
    """A label joined to the prediction it is about: the row `device`/`boot`/`row`, the model
    version that predicted it, its `prediction` and the true `label`, when the hub `received`
    the label and when the prediction was made (`predicted`: its record's time), epoch s."""

    device: str
    boot: int
    row: int
    model: ModelRef
    prediction: Scalar
    label: Scalar
    received: float
    predicted: float = 0.0

    @property
    def id(self) -> str:
        return prediction_id(self.device, self.boot, self.row)


def label_value(value: object) -> Scalar | None:
    """A label as stored (a stripped string, an integer or a finite number), or None when
    `value` is not one (null, true/false, an empty or too long string, NaN, infinity, a list)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip()
        return text if 0 < len(text) <= MAX_LABEL_CHARS else None
    return None


def label_from_text(text: str) -> Scalar | None:
    """A label read from a CSV cell: `2` an integer, `2.5` a number, anything else a class
    name; None when it is not a label (empty, `nan`, `inf`)."""
    text = text.strip()
    try:
        return label_value(int(text))
    except ValueError:
        pass
    try:
        return label_value(float(text))
    except ValueError:
        return label_value(text)
