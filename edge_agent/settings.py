"""The agent's settings: one frozen dataclass per section of a device file and its profile.

These classes are the schema. `edge_agent.config` derives the keys of every TOML table and the
types they take from the fields (``int``: an integer, ``float``: any number, ``bool``, ``str``,
``Path``: a string relative to the device file, a dataclass: a sub-table), checks each value
against its field's rule (`ruled`; a number without one must be positive) and builds an
`AgentSettings` once. A field added here is a key the files accept.

Defaults: the profile sections (runtime ... results) have none here; firmware_configs/base.toml
sets every one of their keys, and a profile or the device file overrides them. The two sections
only a device file holds ([device], [broker]) have no profile under them: their defaults are the
fields' defaults, and the loader fills in the two that follow from the device id.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import field, fields
from pathlib import Path
from typing import Any

from edge_agent.inference.tflite import TFLITE_RUNTIMES
from edge_agent.mqtt.options import is_results_topic
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.records import MAX_WINDOW_ROWS
from edge_agent.uplink.caps import Cap

MAX_CAPTURE_ROWS = 1000  # rows of inputs a drift alert may carry to the hub

Rule = Callable[[Any], str | None]  # a well-typed value -> None if fine, else what was expected
RULE = "rule"  # field metadata: the field's Rule
NOT_A_KEY = "not_a_key"  # field metadata: filled in by the loader, not a key of the file


def ruled(rule: Rule) -> dict[str, Rule]:
    """The metadata of a field whose value must pass `rule` rather than "a positive number":
    ``x: float = field(metadata=ruled(...))``."""
    return {RULE: rule}


def _zero_or_positive(v: Any) -> str | None:
    return None if 0 <= v < math.inf else "0 (off) or a positive number"


def _windows_above_1(example: str) -> Rule:
    return lambda v: None if 1 < v < math.inf else f"a number of windows above 1, like {example}"


@frozen(kw_only=True)
class RuntimeSettings:
    threads: int  # onnxruntime intra-op threads
    # the oldest TFLite runtime devices of this class run: conversions for them are validated
    # on it (converters/runtimes)
    tflite: str = field(
        metadata=ruled(
            lambda v: (
                None
                if v in TFLITE_RUNTIMES
                else f"a TFLite runtime, one of {', '.join(map(repr, TFLITE_RUNTIMES))}"
            )
        )
    )


@frozen(kw_only=True)
class PipelineSettings:
    batch_max: int  # rows inferred together
    queue_max: int  # sensor lines waiting for inference
    queue_max_bytes: int  # ... and their bytes (images are large)


@frozen(kw_only=True)
class TelemetrySettings:
    interval_s: float
    batch_size: int
    max_inflight: int
    confirm_timeout_s: float
    status_interval_s: float
    drain_rate: float = field(metadata=ruled(_zero_or_positive))
    raw_sample_rate: float = field(
        metadata=ruled(
            lambda v: None if 0 <= v <= 1 else "a probability from 0 (off) to 1 (every row)"
        )
    )
    no_input_s: float = field(
        metadata=ruled(
            lambda v: (
                None if 0 <= v < math.inf else "0 (off) or a number of seconds above 0, like 60"
            )
        )
    )
    # each window names its rows by prediction id; with predictions, the model's output for each
    predictions: bool
    window_rows: int = field(
        metadata=ruled(
            lambda v: None if 1 <= v <= MAX_WINDOW_ROWS else f"1 to {MAX_WINDOW_ROWS} rows"
        )
    )


@frozen(kw_only=True)
class BufferCaps:
    """Each priority class's own cap ([buffer.caps.events] ...; see
    edge_agent.uplink.buffer.next_drop)."""

    events: Cap
    drift: Cap
    labels: Cap
    telemetry: Cap

    def by_kind(self) -> dict[str, Cap]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@frozen(kw_only=True)
class BufferSettings:
    max_rows: int
    max_bytes: int
    caps: BufferCaps
    # group commit (edge_agent.uplink.buffer): the buffer's files fsynced once group_rows
    # records are appended, at most group_window_s after the first of them; 1 fsyncs each
    group_rows: int
    group_window_s: float


@frozen(kw_only=True)
class DriftSettings:
    window: int
    window_s: float = field(metadata=ruled(_zero_or_positive))
    min_interval_s: float = field(metadata=ruled(_zero_or_positive))
    warn_every: float = field(metadata=ruled(_windows_above_1("100 (1% of windows)")))
    alert_every: float = field(metadata=ruled(_windows_above_1("10000")))
    capture: bool
    capture_rows: int = field(
        metadata=ruled(
            lambda v: None if 1 <= v <= MAX_CAPTURE_ROWS else f"1 to {MAX_CAPTURE_ROWS} rows"
        )
    )


@frozen(kw_only=True)
class LimitsSettings:
    max_bundle_bytes: int
    transfer_window: int
    transfer_timeout_s: float


@frozen(kw_only=True)
class ResultsSettings:
    """Inference results published for local actuators (edge_agent.inference.results)."""

    enabled: bool
    host: str = field(metadata=ruled(lambda v: None if v.strip() else "a host name or address"))
    port: int = field(
        metadata=ruled(lambda v: None if 1 <= v <= 65535 else "a port number 1-65535")
    )
    topic: str = field(
        metadata=ruled(
            lambda v: (
                None
                if is_results_topic(v)
                else "an MQTT topic name without wildcards ('+', '#') whose only placeholder "
                "is {device_id}"
            )
        )
    )
    qos: int = field(metadata=ruled(lambda v: None if v in (0, 1) else "0 or 1"))
    # ground truth taken in on labels_topic of the same broker and sent to the hub
    # (edge_agent.uplink.labels); needs `enabled`
    labels: bool
    labels_topic: str = field(
        metadata=ruled(
            lambda v: (
                None
                if is_results_topic(v)
                else "an MQTT topic name without wildcards ('+', '#') whose only placeholder "
                "is {device_id}"
            )
        )
    )


@frozen(kw_only=True)
class DeviceSettings:
    id: str  # required; the loader checks it is a device id
    state_dir: Path  # default: state-<id> next to the device file


@frozen(kw_only=True)
class BrokerSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str  # default: the device id
    password_file: Path | None = None
    topic_prefix: str = "edgefleet"
    # read from password_file by the loader (an unreadable file is a load error)
    password: str | None = field(default=None, repr=False, metadata={NOT_A_KEY: True})


DEVICE_FILE_SECTIONS = ("device", "broker")  # the sections a profile may not set


@frozen(kw_only=True)
class AgentSettings:
    """A device file layered over its profile over base.toml, validated: built once by
    `edge_agent.config.load_config`."""

    profile: str
    device: DeviceSettings
    broker: BrokerSettings
    runtime: RuntimeSettings
    pipeline: PipelineSettings
    telemetry: TelemetrySettings
    buffer: BufferSettings
    drift: DriftSettings
    limits: LimitsSettings
    results: ResultsSettings
    inputs: tuple[dict[str, Any], ...]  # [[inputs]], checked by edge_agent.sources
