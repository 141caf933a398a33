"""Retraining policies without a hub: the trigger grammar (one clear error per mistake) and
the decisions of `cloud_hub.retrain.triggers` (sustained drift, label counts, accuracy)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from cloud_hub.quality.labels import JoinedLabel
from cloud_hub.retrain.policy import (
    AccuracyTrigger,
    DriftTrigger,
    LabelsTrigger,
    PolicyError,
    parse_command,
    parse_timeout,
    parse_trigger,
)
from cloud_hub.retrain.triggers import (
    MIN_ACCURACY_LABELS,
    DriftPoint,
    drift_holds,
    first_firing,
    labels_hold,
)
from edge_agent.protocol.messages import ModelRef


def test_the_three_triggers_parse_and_print_back() -> None:
    drift = parse_trigger("drift alert on 20% of devices for 1h")
    assert drift == DriftTrigger("alert", 0.2, 3600.0)
    assert parse_trigger("Drift WARN on 50% of devices for 90s") == DriftTrigger("warn", 0.5, 90.0)
    assert parse_trigger("accuracy < 0.9") == AccuracyTrigger(0.9)
    assert parse_trigger("accuracy<0.85") == AccuracyTrigger(0.85)
    assert parse_trigger("5000 new labels") == LabelsTrigger(5000)
    for text in ("drift alert on 20% of devices for 1h", "accuracy < 0.9", "5000 new labels"):
        assert str(parse_trigger(text)) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "",
            "--when '': expected `drift alert on 20% of devices for 1h`, `accuracy < 0.9` or "
            "`5000 new labels` at character 1, got the end of the text",
        ),
        (
            "drift alarm on 20% of devices for 1h",
            "--when 'drift alarm on 20% of devices for 1h': expected 'alert' or 'warn' at "
            "character 7, got 'alarm'",
        ),
        (
            "drift alert on 20 of devices for 1h",
            "--when 'drift alert on 20 of devices for 1h': expected a share of devices such as "
            "20% at character 16, got '20'",
        ),
        (
            "drift alert on 20% of devices for an hour",
            "--when 'drift alert on 20% of devices for an hour': expected a duration such as "
            "90s, 30m, 1h or 2d at character 35, got 'an'",
        ),
        (
            "drift alert on 20% of devices",
            "--when 'drift alert on 20% of devices': expected 'for' at character 30, got the "
            "end of the text",
        ),
        (
            "accuracy > 0.9",
            "--when 'accuracy > 0.9': expected '<' at character 10, got '>'",
        ),
        (
            "accuracy < 90%",
            "--when 'accuracy < 90%': expected an accuracy above 0 and at most 1, such as 0.9 "
            "at character 12, got '90%'",
        ),
        (
            "5000 labels",
            "--when '5000 labels': expected 'new' at character 6, got 'labels'",
        ),
        (
            "5000 new labels please",
            "--when '5000 new labels please': expected the end of the trigger at character 17, "
            "got 'please'",
        ),
        (
            "when it drifts",
            "--when 'when it drifts': expected `drift alert on 20% of devices for 1h`, "
            "`accuracy < 0.9` or `5000 new labels` at character 1, got 'when'",
        ),
    ],
)
def test_each_mistake_says_what_was_expected_where_and_what_came(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_trigger(text)
    assert str(caught.value) == message
    assert "\n" not in message


def test_the_command_needs_both_placeholders_and_shell_like_words() -> None:
    assert parse_command("python train.py --data {data} --out {model}") == (
        "python",
        "train.py",
        "--data",
        "{data}",
        "--out",
        "{model}",
    )
    with pytest.raises(PolicyError, match=r"expected \{model\} in the command"):
        parse_command("python train.py {data}")
    with pytest.raises(PolicyError, match="expected shell-like words, got No closing quotation"):
        parse_command("python 'train.py {data} {model}")
    assert parse_timeout("30m") == 1800.0
    with pytest.raises(PolicyError, match=r"--timeout: expected a duration .* got 'soon'"):
        parse_timeout("soon")


HOUR = 3600.0
NOW = 100_000.0


def _every(
    device: str, status: str, start: float, end: float, step: float = 300.0
) -> list[DriftPoint]:
    out, t = [], start
    while t <= end:
        out.append(DriftPoint(device, t, status))
        t += step
    return out


def test_drift_fires_only_when_sustained_over_the_whole_duration() -> None:
    trigger = DriftTrigger("alert", 0.5, HOUR)
    # two of four devices alerted all hour: 50%
    points = _every("a", "alert", NOW - 2 * HOUR, NOW) + _every("b", "alert", NOW - 2 * HOUR, NOW)
    why = drift_holds(trigger, points, 4, NOW, since=0.0)
    assert why is not None and "2 of 4 devices (50%)" in why
    # one of them was ok for ten minutes half an hour ago: not sustained
    gap = [p for p in points if not (p.device == "b" and NOW - 40 * 60 <= p.at <= NOW - 30 * 60)]
    gap += [DriftPoint("b", NOW - 35 * 60, "ok")]
    assert drift_holds(trigger, gap, 4, NOW, since=0.0) is None
    # alerting only for the last half hour: not yet
    late = _every("a", "alert", NOW - HOUR / 2, NOW) + _every("b", "alert", NOW - HOUR / 2, NOW)
    assert drift_holds(trigger, late, 4, NOW, since=0.0) is None
    # a device that went quiet stops counting once its last report is stale
    quiet = _every("a", "alert", NOW - 2 * HOUR, NOW) + _every(
        "b", "alert", NOW - 2 * HOUR, NOW - HOUR / 2
    )
    assert drift_holds(trigger, quiet, 4, NOW, since=0.0) is None
    # warn counts for a warn trigger, not for an alert trigger
    warned = _every("a", "warn", NOW - 2 * HOUR, NOW) + _every("b", "alert", NOW - 2 * HOUR, NOW)
    assert drift_holds(trigger, warned, 4, NOW, since=0.0) is None
    assert drift_holds(DriftTrigger("warn", 0.5, HOUR), warned, 4, NOW, since=0.0) is not None


def test_drift_fires_once_per_episode() -> None:
    trigger = DriftTrigger("alert", 0.2, HOUR)
    points = _every("a", "alert", NOW - 3 * HOUR, NOW + HOUR)
    assert drift_holds(trigger, points, 1, NOW, since=0.0) is not None
    fired = NOW - HOUR / 2  # the last firing: the span must begin after it
    assert drift_holds(trigger, points, 1, NOW, since=fired) is None
    assert drift_holds(trigger, points, 1, fired + HOUR, since=fired) is not None
    assert drift_holds(trigger, points, 0, NOW, since=0.0) is None


class FakeLabels:
    """A LabelSource over a fixed list of labels."""

    def __init__(self, rows: Sequence[JoinedLabel]) -> None:
        self._rows = list(rows)

    def _since(self, model: str, since: float) -> list[JoinedLabel]:
        return [r for r in self._rows if r.model.name == model and r.received >= since]

    def count_since(self, model: str, since: float) -> int:
        return len(self._since(model, since))

    def accuracy(self, model: str, since: float) -> tuple[float, int] | None:
        rows = self._since(model, since)
        if not rows:
            return None
        return sum(r.prediction == r.label for r in rows) / len(rows), len(rows)

    def rows(self, model: ModelRef) -> Sequence[JoinedLabel]:
        return [r for r in self._rows if r.model == model]


def _labels(n: int, right: int, at: float) -> FakeLabels:
    m = ModelRef("wine", 1)
    return FakeLabels([JoinedLabel("a", 1, i, m, 1, 1 if i < right else 0, at) for i in range(n)])


def test_label_count_and_accuracy_triggers() -> None:
    labels = _labels(120, 100, at=NOW)
    assert labels_hold(LabelsTrigger(100), labels, "wine", since=0.0) is not None
    assert labels_hold(LabelsTrigger(121), labels, "wine", since=0.0) is None
    assert labels_hold(LabelsTrigger(100), labels, "wine", since=NOW + 1) is None
    why = labels_hold(AccuracyTrigger(0.9), labels, "wine", since=0.0)
    assert why == "accuracy < 0.9: accuracy 0.833 over 120 labels since the last run"
    assert labels_hold(AccuracyTrigger(0.8), labels, "wine", since=0.0) is None
    few = _labels(MIN_ACCURACY_LABELS - 1, 0, at=NOW)  # too few to say anything
    assert labels_hold(AccuracyTrigger(0.9), few, "wine", since=0.0) is None
    fired = first_firing(
        [DriftTrigger("alert", 0.2, HOUR), LabelsTrigger(50)],
        model="wine",
        now=NOW,
        since=0.0,
        drift=[],
        devices=3,
        labels=labels,
    )
    assert fired == "50 new labels: 120 labels since the last run"


def test_card_lineage_is_optional_bounded_and_checked() -> None:
    import numpy as np

    from converters.card import reference_card
    from edge_agent.errors import BundleRejected
    from edge_agent.protocol.card import parse_card

    card = reference_card(np.arange(40.0).reshape(20, 2), ["a", "b"])
    assert parse_card(card).lineage is None
    lineage = {"parent": "wine@1", "data_sha256": "ab" * 32, "data_rows": 812, "trigger": "x"}
    assert parse_card(card | {"lineage": lineage}).lineage == lineage
    for bad, message in [
        ({"mother": "wine@1"}, "card.lineage: unknown key 'mother'"),
        ({"data_rows": -1}, "card.lineage.data_rows: expected a count, got -1"),
        ({"trigger": "x" * 301}, "card.lineage.trigger: expected text of at most 300"),
    ]:
        with pytest.raises(BundleRejected, match=message):
            parse_card(card | {"lineage": bad})
