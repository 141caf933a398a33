"""The inference pipeline: validate, micro-batch, infer, feed the drift monitor, record telemetry.

The serving model is an `ActiveModel`, swapped by a single reference assignment after a
verified install passed its health gate, so a batch always runs on one whole model.

A telemetry window never spans two models: every row and every rejection goes into a window of
the model that handled it (or of none), and the first one handled by another model closes the
window before. So the `no-model` rejections of a device waiting for its first model, or the
errors of the model it ran before an update, are never stamped with the model installed next.

Once the agent has persisted its boot counter it calls `number_rows(device, boot)`: from then on
every inferred row gets a prediction id `{device}/{boot}/{row}` (edge_agent.protocol.ids), `row`
counting the rows inferred under that boot from 0, in order. A window's rows are consecutive, so
its record names them by range, with the model's prediction for each unless
`keep_predictions` is off (`WindowRows`); a window closes at `window_rows` rows, so its record
stays bounded whatever the input rate. Rows inferred before `number_rows` have no id.

With `on_result`, every inferred row is also handed on as a small JSON-able dict, for local
actuators (see `edge_agent.inference.results`)::

    {"ts": 1718000000.1, "model": "iris@3", "prediction": 2, "latency_ms": 0.012,
     "id": "pi-01/3/1520"}

`ts` is when the batch was inferred (epoch seconds), `prediction` the label or value as a JSON
type, `latency_ms` the row's share of the batch's inference time, `id` the row's prediction id
(null before the rows are numbered). For an anomaly model `prediction` is the row's score and
`"anomaly"` (true or false) says whether it is above the card's threshold; its telemetry
windows count the anomalies. Without a callback nothing of this is built.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.drift import MISSING_REASONS, DriftMonitor
from edge_agent.errors import SensorLineError
from edge_agent.framing import Framer, framer_for
from edge_agent.inference.runtime import INFERENCE_ERRORS, Runtime
from edge_agent.inference.shadow import Shadow
from edge_agent.protocol.card import ModelCard
from edge_agent.protocol.ids import prediction_id
from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.records import MAX_WINDOW_ROWS, ShadowReport, TelemetryWindow
from edge_agent.sources.backlog import GAP
from edge_agent.uplink.sampling import RawSampler
from edge_agent.uplink.telemetry import RunningStats, Window

log = logging.getLogger(__name__)
_clock = time.perf_counter  # a batch's inference time

OnResult = Callable[[dict[str, Any]], None]
OnShadowReport = Callable[[Shadow, ShadowReport], None]


@dataclass
class ActiveModel:
    card: ModelCard
    runtime: Runtime
    monitor: DriftMonitor
    framer: Framer
    ref: str = field(init=False, repr=False)  # "name@version", as results carry it
    scored: bool = field(init=False, repr=False)  # whether the monitor wants class probabilities
    rows: bool = field(init=False, repr=False)  # a row model: a short line is a missing value
    windows: bool = field(init=False, repr=False)  # a window model: many lines, one inference

    def __post_init__(self) -> None:
        self.ref = f"{self.card.model.name}@{self.card.model.version}"
        self.scored = self.monitor.wants_scores
        self.rows = self.card.input.kind == "row"
        self.windows = self.card.input.kind == "window"

    @classmethod
    def build(
        cls,
        card: ModelCard,
        runtime: Runtime,
        drift_window: int,
        warn_every: float,
        alert_every: float,
        drift_window_s: float | None = None,
        drift_min_interval_s: float | None = None,
    ) -> ActiveModel:
        monitor = DriftMonitor(
            card,
            drift_window,
            drift_window_s,
            warn_every,
            alert_every,
            min_interval_s=drift_min_interval_s,
        )
        return cls(
            card,
            runtime,
            monitor,
            framer_for(card),
        )


def _infer(model: ActiveModel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's predictions for the batch `x`, and with a calibrated card (drift's accuracy
    estimate wants them) its class probabilities, from one run."""
    if model.scored:
        return model.runtime.predict_with_scores(x)
    return model.runtime.predict(x), None


def _infer_each(
    model: ActiveModel, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The items of `x` the model runs one by one: their indices, predictions and scores (the
    others raised)."""
    kept: list[int] = []
    predictions: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    for i in range(len(x)):
        try:
            p, s = _infer(model, x[i : i + 1])
        except INFERENCE_ERRORS:
            continue
        kept.append(i)
        predictions.append(p)
        if s is not None:
            scores.append(s)
    if not kept:
        return np.empty(0, dtype=np.intp), np.empty(0), None
    joined = np.concatenate(scores) if len(scores) == len(kept) else None
    return np.array(kept, dtype=np.intp), np.concatenate(predictions), joined


class Pipeline:
    def __init__(
        self,
        on_drift: Callable[[dict[str, Any]], None],
        on_window: Callable[[TelemetryWindow], None],
        on_result: OnResult | None = None,
        on_shadow_report: OnShadowReport | None = None,
        *,
        window_rows: int = MAX_WINDOW_ROWS,
        keep_predictions: bool = True,
    ) -> None:
        if not 1 <= window_rows <= MAX_WINDOW_ROWS:
            raise ValueError(f"window_rows: expected 1 to {MAX_WINDOW_ROWS}, got {window_rows}")
        self.active: ActiveModel | None = None
        self.shadow: Shadow | None = None  # a candidate beside `active`; outputs never used
        self.sampler: RawSampler | None = None  # raw rows to the hub (off by default)
        self.stats = RunningStats()
        self.result_errors = 0  # times on_result raised
        self._on_drift = on_drift
        self._on_window = on_window
        self._on_result = on_result
        self._on_shadow_report = on_shadow_report
        self._window_rows = window_rows
        self._keep = keep_predictions
        self._device = ""
        self._boot: int | None = None  # rows are numbered under this boot (None: not yet)
        self._next_row = 0  # the number of the next inferred row
        self._window = self._new_window(time.time())
        self._window_of: ActiveModel | None = None  # what handled everything in the window
        self._lock = threading.Lock()
        # the batch `process` is framing (it runs on one thread: the agent's main loop)
        self._framing: ActiveModel | None = None
        self._refused = 0  # lines of it the framer refused
        self._refuse = self._refuse_line  # bound once: the framer's callback on every batch

    def number_rows(self, device: str, boot: int) -> None:
        """From now on, number the inferred rows `device`/`boot`/0, 1, 2, ... The open window
        (rows without ids) closes first. Numbering again under the same boot changes nothing."""
        now = time.time()
        with self._lock:
            if (self._device, self._boot) == (device, boot):
                return
            window, model = self._window, self._window_of
            self._device, self._boot, self._next_row = device, boot, 0
            self._window = self._new_window(now)
        if not window.empty:
            self._on_window(window.to_record(now, _stamp(model)))

    def _new_window(self, now: float) -> Window:
        return Window(now, self._boot, self._keep and self._boot is not None)

    def process(self, lines: list[tuple[str, bytes]]) -> None:
        """One micro-batch of (format, raw message) pairs: sensor lines, or images. A `GAP`
        among them (edge_agent.sources.backlog: the queue refused lines there) restarts the
        framing of a window model at that point."""
        if GAP in lines:
            at = lines.index(GAP)
            if at:
                self.process(lines[:at])
            model = self.active
            if model is not None:
                model.framer.restart()
            if at + 1 < len(lines):
                self.process(lines[at + 1 :])
            return
        model = self.active
        if model is None:
            self._reject_for(None, "no-model", len(lines))
            return

        self._framing, self._refused = model, 0
        framed = model.framer.frame(lines, self._refuse)
        if model.windows:  # many lines make one window: the error rate counts lines
            with self._lock:
                closed = self._window_for(model)
                self._window.took(len(lines) - self._refused)
            if closed is not None:
                self._on_window(closed)
        if framed is None:
            return
        x, seen, watch = framed
        n = len(x)
        start = _clock()
        try:
            predictions, scores = _infer(model, x)
        except INFERENCE_ERRORS:
            if n == 1:
                self._reject_for(model, "inference-error")
                return
            # a batch the model cannot run: the items it can, one by one, go on without the rest
            kept, predictions, scores = _infer_each(model, x)
            self._reject_for(model, "inference-error", n - len(kept))
            if not len(kept):
                return
            x, seen, n = x[kept], seen[kept], len(kept)
            watch = np.flatnonzero(np.isin(kept, watch)) if watch is not None else None
        latency_ms = (_clock() - start) * 1000
        anomaly = model.card.anomaly
        flags = anomaly.flags(predictions) if anomaly is not None else None
        with self._lock:
            closed = self._window_for(model) if model is not self._window_of else None
            first = self._next_row if self._boot is not None else None
            if first is not None:
                self._next_row += n
            window = self._window
            if window.count + n < self._window_rows:  # the batch fits: the window stays open
                window.add(latency_ms, predictions, first, flags)
                full = None
            else:
                full = self._add_rows(latency_ms, predictions, first, flags)
            self.stats.add(latency_ms, n)
        if closed is not None:
            self._on_window(closed)
        if full:
            for record in full:
                self._on_window(record)
        if self._on_result is not None:
            self._results(self._on_result, model.ref, predictions, latency_ms / n, first, flags)
        if watch is None:
            report = model.monitor.add(seen, predictions, scores)
        elif len(watch):  # overlapping windows: drift counts those that do not overlap
            watched = None if scores is None else scores[watch]
            report = model.monitor.add(seen[watch], predictions[watch], watched)
        else:
            report = None
        if report is not None:
            self._on_drift(report)
        shadow = self.shadow
        if shadow is not None and shadow.input in (None, model.card.input):
            compared = shadow.observe(x, predictions, latency_ms, model.card.model, flags)
            if compared is not None and self._on_shadow_report is not None:
                self._on_shadow_report(shadow, compared)
        if self.sampler is not None:
            self.sampler.offer(model.card, seen, predictions, self._row_id(first))

    def _refuse_line(self, exc: SensorLineError) -> None:
        """A line the framer of `_framing` (the model of the batch in `process`) refused."""
        model = self._framing
        assert model is not None
        self._refused += 1
        self._reject_for(model, exc.reason)
        if model.rows and exc.reason in MISSING_REASONS:  # a line short of a value
            model.monitor.missing()

    def _add_rows(
        self,
        latency_ms: float,
        predictions: np.ndarray,
        first: int | None,
        flags: np.ndarray | None = None,
    ) -> list[TelemetryWindow]:
        """Under the lock: the batch's rows (and an anomaly model's flags) into the open window,
        which closes at window_rows rows (the rest of the batch goes on in the next); returns
        the windows closed."""
        closed = []
        n, done = len(predictions), 0
        while done < n:
            take = min(n - done, self._window_rows - self._window.count)
            part = predictions if take == n else predictions[done : done + take]
            part_flags = flags if flags is None or take == n else flags[done : done + take]
            self._window.add(latency_ms, part, None if first is None else first + done, part_flags)
            done += take
            if self._window.count >= self._window_rows:
                now = time.time()
                window, self._window = self._window, self._new_window(now)
                closed.append(window.to_record(now, _stamp(self._window_of)))
        return closed

    def _row_id(self, first: int | None) -> Callable[[int], str] | None:
        """The prediction id of the batch's i-th row (None: rows not numbered yet)."""
        if first is None or self._boot is None:
            return None
        device, boot = self._device, self._boot
        return lambda i: prediction_id(device, boot, first + i)

    def _results(
        self,
        on_result: OnResult,
        ref: str,
        predictions: np.ndarray,
        share_ms: float,
        first: int | None,
        flags: np.ndarray | None = None,
    ) -> None:
        ts = time.time()
        share_ms = round(share_ms, 4)
        row_id = self._row_id(first)
        flagged = flags.tolist() if flags is not None else None
        for i, prediction in enumerate(predictions.tolist()):  # numpy scalars -> JSON types
            result = {
                "ts": ts,
                "model": ref,
                "prediction": prediction,
                "latency_ms": share_ms,
                "id": row_id(i) if row_id is not None else None,
            }
            if flagged is not None:
                result["anomaly"] = flagged[i]
            try:
                on_result(result)
            except Exception:  # an actuator hook must not stop inference
                self.result_errors += 1
                if self.result_errors == 1:
                    log.exception("the result callback raised; further errors are only counted")

    def reject(self, reason: str) -> None:
        """A line lost before any model saw it (a full queue): counted in the open window."""
        with self._lock:
            self._window.reject(reason)
            self.stats.rejected[reason] += 1

    def _reject_for(self, model: ActiveModel | None, reason: str, n: int = 1) -> None:
        """`n` lines that `model` (None: no model) refused."""
        with self._lock:
            closed = self._window_for(model)
            self._window.reject(reason, n)
            self.stats.rejected[reason] += n
        if closed is not None:
            self._on_window(closed)

    def _window_for(self, model: ActiveModel | None) -> TelemetryWindow | None:
        """Under the lock: make the open window `model`'s. If another model's window was open,
        it closes here; its record is returned, to hand on once the lock is released."""
        if model is self._window_of:
            return None
        now = time.time()
        window, self._window = self._window, self._new_window(now)
        before, self._window_of = self._window_of, model
        return None if window.empty else window.to_record(now, _stamp(before))

    def flush_window(self) -> None:
        """Close the current telemetry window and hand it on (nothing if it saw nothing),
        stamped with the model that handled what it holds."""
        now = time.time()
        with self._lock:
            window, self._window = self._window, self._new_window(now)
            model = self._window_of
        if not window.empty:
            self._on_window(window.to_record(now, _stamp(model)))


def _stamp(model: ActiveModel | None) -> ModelRef | None:
    return model.card.model if model else None
