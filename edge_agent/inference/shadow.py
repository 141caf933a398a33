"""Shadow mode: a candidate model runs next to the serving one on the same live rows.

Its outputs are compared with the serving model's, timed, and dropped: nothing acts on them.
Every `rows_per_report` rows the comparison becomes a report (pure logic; the agent sends it
as a `shadow-report` event)::

    {"current": {"name": "iris", "version": 3}, "rows": 200, "agreement": 0.985, "errors": 0,
     "latency_ms": {"current": {"p50": 0.02, "p95": 0.03}, "candidate": {"p50": .., "p95": ..}}}

`agreement` is the share of rows on which the candidate gave the serving model's label (or a
value within 1%; for two anomaly models, flagged the row the same way, each by its own card's
threshold: their scores need not be on one scale); a row the candidate failed on counts as an
error and a disagreement.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from edge_agent.inference.runtime import INFERENCE_ERRORS, Runtime
from edge_agent.protocol.card import Anomaly
from edge_agent.protocol.input_spec import InputSpec
from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.records import ShadowReport
from edge_agent.update.health import outputs_agree
from edge_agent.uplink.telemetry import percentiles


@dataclass
class Shadow:
    candidate: ModelRef
    runtime: Runtime
    task: str
    rows_per_report: int
    rollout: str | None = None
    input: InputSpec | None = (
        None  # the candidate's input; compared only where it is the serving one's
    )
    anomaly: Anomaly | None = None  # an anomaly candidate: how its score is read
    # one entry per compared row; a report takes exactly `rows_per_report` of them
    _agree: list[bool] = field(default_factory=list, repr=False)
    _failed: list[bool] = field(default_factory=list, repr=False)
    _current_ms: list[float] = field(default_factory=list, repr=False)
    _candidate_ms: list[float] = field(default_factory=list, repr=False)

    def observe(
        self,
        x: np.ndarray,
        served: np.ndarray,
        served_ms: float,
        serving: ModelRef,
        served_flags: np.ndarray | None = None,
    ) -> ShadowReport | None:
        """Run the candidate on the batch the serving model just answered (with its anomaly
        flags, when it is an anomaly model); a report when `rows_per_report` rows have been
        compared since the last one."""
        n = len(x)
        start = time.perf_counter()
        try:
            got = self.runtime.predict(x)
        except INFERENCE_ERRORS:
            self._agree.extend([False] * n)
            self._failed.extend([True] * n)
            self._candidate_ms.extend([math.nan] * n)
        else:
            self._candidate_ms.extend([(time.perf_counter() - start) * 1000] * n)
            if self.anomaly is not None and served_flags is not None:
                self._agree.extend((self.anomaly.flags(got) == served_flags).tolist())
            else:
                self._agree.extend(outputs_agree(self.task, served, got).tolist())
            self._failed.extend([False] * n)
        self._current_ms.extend([served_ms] * n)
        if len(self._agree) < self.rows_per_report:
            return None
        return self._report(serving)

    def _report(self, serving: ModelRef) -> ShadowReport:
        k = self.rows_per_report
        candidate_ms = [v for v in self._candidate_ms[:k] if not math.isnan(v)]
        report = ShadowReport(
            current=serving,
            rows=k,
            agreement=round(sum(self._agree[:k]) / k, 4),
            errors=sum(self._failed[:k]),
            latency_ms={
                "current": percentiles(self._current_ms[:k], (50, 95)),
                "candidate": percentiles(candidate_ms, (50, 95)),
            },
        )
        for rows in (self._agree, self._failed, self._current_ms, self._candidate_ms):
            del rows[:k]
        return report
