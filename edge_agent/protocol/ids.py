"""Prediction ids: every row an agent infers is `{device}/{boot}/{row}`.

`boot` is the agent's persisted boot counter (its status says it), `row` counts the rows the agent
inferred under that boot: 0, 1, 2, ... So an id is unique across the fleet and a restart, and the
ids of a window are a range (`edge_agent.protocol.records.WindowRows`): the hub learns every
id, and the prediction made for it, from the telemetry it already receives. Ground truth
(`Labels`, the hub's API and CSV import) names the prediction it is about by this id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edge_agent.errors import MessageError
from edge_agent.protocol.messages import MAX_INT
from edge_agent.protocol.topics import check_device_id

_ID = re.compile(r"^([^/]+)/([0-9]{1,19})/([0-9]{1,19})$")
EXPECTED = "a prediction id DEVICE/BOOT/ROW like pi-01/3/1520"


@dataclass(frozen=True, order=True)
class PredictionId:
    device: str
    boot: int
    row: int

    def __str__(self) -> str:
        return prediction_id(self.device, self.boot, self.row)


def prediction_id(device: str, boot: int, row: int) -> str:
    return f"{device}/{boot}/{row}"


def parse_prediction_id(text: object, where: str = "prediction id") -> PredictionId:
    """`pi-01/3/1520` -> PredictionId; MessageError saying what was expected otherwise."""
    if not isinstance(text, str):
        raise MessageError(f"{where}: expected {EXPECTED}, got {type(text).__name__}")
    found = _ID.fullmatch(text)
    if found is None:
        raise MessageError(f"{where}: expected {EXPECTED}, got {text!r:.80}")
    device, boot, row = found.group(1), int(found.group(2)), int(found.group(3))
    try:
        check_device_id(device)
    except MessageError as exc:
        raise MessageError(f"{where}: expected {EXPECTED}, got {text!r:.80} ({exc})") from exc
    if not (1 <= boot <= MAX_INT and row <= MAX_INT):
        raise MessageError(
            f"{where}: expected {EXPECTED}, got {text!r:.80} (a boot counts from 1, a row "
            f"from 0, both up to {MAX_INT})"
        )
    return PredictionId(device, boot, row)
