"""A validation report and a model card as rows people read (the CLI renders them as tables).

Pure functions: dicts in, rows of strings out.
"""

from __future__ import annotations

from typing import Any

_BEFORE_AFTER = (
    ("accuracy", "accuracy"),
    ("macro_f1", "macro F1"),
    ("rmse", "RMSE"),
    ("mae", "MAE"),
    ("anomaly_rate", "anomaly rate"),
    ("precision", "precision of the anomaly flags"),
    ("recall", "recall of the anomaly flags"),
    ("f1", "F1 of the anomaly flags"),
    ("size_bytes", "size (bytes)"),
)
_SINGLE = (
    ("label_agreement", "label agreement"),
    ("flag_agreement", "anomaly flag agreement"),
    ("threshold", "anomaly threshold (score above)"),
    ("threshold_from", "threshold from"),
    ("max_abs_diff", "max abs output diff"),
    ("size_ratio", "size after / before"),
    ("latency_p50_ms", "p50 latency, batch 1 (ms)"),
    ("rows", "validation rows"),
    ("validated_on", "validated on (the profile's TFLite runtime)"),
    ("op_set", "op set it loads"),
)


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def report_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(check, before, after) for each figure the report holds."""
    rows = [
        (label, fmt(report[f"{key}_before"]), fmt(report[f"{key}_after"]))
        for key, label in _BEFORE_AFTER
        if f"{key}_before" in report
    ]
    rows += [(label, "", fmt(report[key])) for key, label in _SINGLE if key in report]
    rows += [
        (label, "", stage_text(report[key], report.get("task")))
        for key, label in _STAGES
        if isinstance(report.get(key), dict)
    ]
    return rows


_STAGES = (
    ("conversion", "outputs: unquantized vs source"),
    ("quantization", "outputs: shipped vs unquantized"),
    ("target", "outputs: target runtime vs hub"),
)


def stage_text(stage: dict[str, Any], task: Any) -> str:
    """A row-by-row comparison of the outputs, e.g. "1 of 142 rows beyond 0.1 in probability
    (largest 0.038), 1 label(s) changed"."""
    unit = "in probability" if task == "classification" else "of spread"
    text = f"{stage.get('beyond')} of {stage.get('rows')} rows beyond {fmt(stage.get('tolerance'))}"
    text += f" {unit} (largest {fmt(stage.get('largest'))})"
    for key, what in (
        ("labels_changed", "label(s) changed"),
        ("nan_one_side", "NaN on one side"),
        ("edge_rows", "on a float32 split"),
    ):
        if stage.get(key):
            text += f", {stage[key]} {what}"
    return text


def verdict(report: dict[str, Any]) -> str:
    """One line: can the result be trusted, and why."""
    parity = report.get("parity") or {}
    mode = report.get("quantize", "none")
    if parity.get("ok"):
        if report.get("task") == "classification":
            drop = report["accuracy_before"] - report["accuracy_after"]
            what = f"accuracy drop {drop:+.4f}"
        elif report.get("task") == "anomaly":
            what = f"anomaly flag agreement {report['flag_agreement']:.4f}"
        else:
            before = report["rmse_before"]
            rise = (report["rmse_after"] - before) / before if before else 0.0
            what = f"RMSE change {rise:+.2%}"
        line = f"parity OK ({what}, quantize {mode}): the result can be trusted"
    else:
        line = f"PARITY FAILED, written because --force was given: {parity.get('detail', '')}"
    note = report.get("note")
    return f"{line}; note: {note}" if note else line


def card_rows(card: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, value) for the card's identity, schema and health budget."""
    inp = card.get("input", {})
    health = card.get("health", {})
    classes = card.get("classes") or []
    anomaly = card.get("anomaly")
    scored = (
        [
            (
                "anomaly",
                f"score above {fmt(anomaly.get('threshold'))} "
                f"({fmt(anomaly.get('rate'))} of the reference rows)",
            )
        ]
        if isinstance(anomaly, dict)
        else []
    )
    return [
        ("model", f"{card.get('name')}@{card.get('version')}"),
        ("task", fmt(card.get("task"))),
        ("framework", fmt(card.get("framework"))),
        ("estimator", fmt(card.get("estimator"))),
        ("runtime", f"{card.get('runtime')} ({card.get('model_file')})"),
        ("quantize", fmt(card.get("quantize"))),
        ("input", f"{inp.get('dtype')} {inp.get('shape')}"),
        *_image_rows(inp.get("image")),
        *_window_rows(inp.get("window"), inp.get("features")),
        *_category_rows(inp.get("categories")),
        ("classes", ", ".join(map(str, classes)) if classes else "-"),
        *scored,
        ("reference rows", fmt(card.get("reference", {}).get("rows"))),
        ("health: max latency (ms)", fmt(health.get("max_latency_ms"))),
        ("health: min agreement", fmt(health.get("min_agreement"))),
    ]


def _image_rows(image: Any) -> list[tuple[str, str]]:
    """How a device prepares an image model's input (edge_agent.protocol.input_spec)."""
    if not isinstance(image, dict):
        return []
    size = f"{image.get('height')}x{image.get('width')}x{image.get('channels')}"
    how = f"pixel * {fmt(image.get('scale'))} + {fmt(image.get('offset'))}"
    return [("image", f"{size}, {image.get('resize')} resize, {how}")]


def _window_rows(window: Any, channels: Any) -> list[tuple[str, str]]:
    """How a device frames a window model's input (edge_agent.protocol.input_spec)."""
    if not isinstance(window, dict):
        return []
    names = ", ".join(map(str, channels)) if isinstance(channels, list) else "-"
    frame = (
        f"{window.get('size')} samples of {names} at {fmt(window.get('rate_hz'))} Hz, "
        f"every {window.get('stride')}"
    )
    signal = window.get("signal") or []
    takes = ", ".join(map(str, signal)) if signal else "the window itself"
    return [("window", frame), ("model takes", takes)]


def _category_rows(categories: Any) -> list[tuple[str, str]]:
    """The texts a categorical feature takes (edge_agent.protocol.input_spec)."""
    if not isinstance(categories, dict):
        return []
    return [
        (f"categories: {name}", ", ".join(map(str, texts))) for name, texts in categories.items()
    ]


def category_note(sample: dict[str, list[str]], card: dict[str, Any]) -> str:
    """The categorical columns of a conversion: how many texts each takes, and those the
    model's encoder knows that the sample (`sample`: {column: its texts}) lacks."""
    listed = card.get("input", {}).get("categories") or {}
    parts = []
    for name, texts in listed.items():
        extra = [t for t in texts if t not in sample.get(name, ())]
        more = f"; {len(extra)} only the encoder knows: {', '.join(extra)}" if extra else ""
        parts.append(f"{name} ({len(texts)} texts{more})")
    return f"categorical columns: {', '.join(parts)}"


def feature_rows(card: dict[str, Any]) -> list[tuple[str, ...]]:
    """(feature, min, max, mean, std, missing rate) from the drift reference profile; a
    categorical feature's values are category codes, not quantities: only its missing rate."""
    categorical = card.get("input", {}).get("categories") or {}
    keys = ("min", "max", "mean", "std")
    return [
        tuple(
            [
                f["name"],
                *("-" if f["name"] in categorical else fmt(f.get(k)) for k in keys),
                fmt(f.get("missing_rate")),
            ]
        )
        for f in card.get("reference", {}).get("features", [])
    ]
