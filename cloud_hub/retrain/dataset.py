"""A versioned data set for one model version: what the hub holds of its inputs, as CSV.

    samples.csv    the sampled raw rows (RawSample telemetry): device, boot, seq, ts, one column
                   per feature, the serving model's `prediction`, the `label` where one is known
                   (joined by the sample's prediction id, DEVICE/BOOT/ROW)
    captures.csv   the inputs devices captured on drift alerts: device, boot, seq, ts, features
    labels.csv     the labels for its predictions: device, boot, row, prediction, label, received
    reference.csv  the reference sample of the serving model's signed card: features, prediction
    holdout/samples.csv   a fifth of the labeled sampled rows (chosen by a hash of their
                   prediction id, so a row stays on its side as the data grows), kept from training
                   and used to validate a candidate against the serving model
    manifest.json  sha256 and row count of each file, the time range, the model, the features
                   and the categorical features' categories

A categorical feature's values are its texts (devices send the index of the text among the
card's categories); a text the card does not list reached the model as "unknown" and is an empty
cell here (the device keeps no text its card does not list).

The data set's id is a prefix of the hash of its files: the same data gives the same id, and
the folder HOME/datasets/MODEL/ID is written once (in a temporary folder, then renamed).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cloud_hub.drift.source import PublishedCards
from cloud_hub.quality.labels import JoinedLabel
from cloud_hub.retrain.triggers import LabelSource
from cloud_hub.store.database import Store, typed
from edge_agent.errors import ConfigError
from edge_agent.protocol.card import ModelCard
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.ids import parse_prediction_id
from edge_agent.protocol.input_spec import category_text
from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.records import DriftReport, RawSample

ID_CHARS = 12
HOLDOUT_EVERY = 5  # one labeled row in five is held out
HEAD = ["device", "boot", "seq", "ts"]
MANIFEST = "manifest.json"
HOLDOUT = "holdout/samples.csv"


@frozen
class Dataset:
    id: str
    folder: Path
    manifest: dict[str, Any]


def held_out(device: str, boot: int, row: int) -> bool:
    digest = hashlib.sha256(f"{device}/{boot}/{row}".encode()).digest()
    return digest[0] % HOLDOUT_EVERY == 0


def serving_card(cards: PublishedCards, model: ModelRef) -> ModelCard:
    found, problems = cards.lookup([model])
    if model not in found:
        raise ConfigError(problems.get(model, f"no card for {model}"))
    return found[model]


def _csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> tuple[bytes, int]:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    n = 0
    for row in rows:
        w.writerow(["" if v is None else v for v in row])
        n += 1
    return buf.getvalue().encode(), n


def shown(card: ModelCard, values: Sequence[float | None]) -> list[Any]:
    """A row of the card's features as people read it: categories as their texts."""
    cats = card.input.categories if card.input.kind == "row" else {}
    if not cats:
        return list(values)
    return [
        category_text(cats[name], v) if name in cats else v
        for name, v in zip(card.feature_names, values, strict=True)
    ]


def dataset_files(
    store: Store, card: ModelCard, labels: Sequence[JoinedLabel]
) -> tuple[dict[str, tuple[bytes, int]], list[float]]:
    """(file name -> (CSV bytes, rows), the timestamps of the rows) for the card's model."""
    model, features = card.model, card.feature_names
    truth = {(lab.device, lab.boot, lab.row): lab.label for lab in labels}
    train: list[list[Any]] = []
    holdout: list[list[Any]] = []
    held: set[tuple[str, int, int]] = set()  # (device, boot, row) of the held-out labels
    times: list[float] = []
    for r, sample in typed(store.records("telemetry"), RawSample):
        if sample.model != model:
            continue
        key = _row_key(sample)
        label = truth.get(key) if key is not None else None
        row = [
            r.device,
            r.boot,
            r.seq,
            r.ts,
            *shown(card, [sample.features.get(f) for f in features]),
            sample.prediction,
            label,
        ]
        times.append(r.ts)
        if key is not None and label is not None and held_out(*key):
            holdout.append(row)
            held.add(key)
        else:
            train.append(row)
    captures: list[list[Any]] = []
    for r, report in typed(store.records("drift"), DriftReport):
        if report.model != model or report.capture is None:
            continue
        times.append(r.ts)
        for values in report.capture.rows:
            by_name = dict(zip(report.capture.features, values, strict=True))
            texts = shown(card, [by_name.get(f) for f in features])
            captures.append([r.device, r.boot, r.seq, r.ts, *texts])
    label_rows = [
        [lab.device, lab.boot, lab.row, lab.prediction, lab.label, lab.received]
        for lab in labels
        if (lab.device, lab.boot, lab.row) not in held
    ]
    sample_head = [*HEAD, *features, "prediction", "label"]
    reference = (
        [
            [*shown(card, inputs), out]
            for inputs, out in zip(card.sample_inputs, card.sample_outputs, strict=True)
        ]
        if card.sample_file is None
        else []
    )  # a sample in a bundle member is model input, not rows
    files = {
        "samples.csv": _csv(sample_head, train),
        "captures.csv": _csv([*HEAD, *features], captures),
        "labels.csv": _csv(
            ["device", "boot", "row", "prediction", "label", "received"], label_rows
        ),
        "reference.csv": _csv([*features, "prediction"], reference),
        HOLDOUT: _csv(sample_head, holdout),
    }
    return files, times


def build_manifest(
    model: ModelRef,
    features: list[str],
    files: dict[str, tuple[bytes, int]],
    times: list[float],
    categories: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    listing = {
        name: {"sha256": hashlib.sha256(data).hexdigest(), "rows": rows}
        for name, (data, rows) in sorted(files.items())
    }
    content = hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()
    return {
        "id": content[:ID_CHARS],
        "sha256": content,
        "model": str(model),
        "features": features,
        **({"categories": {k: list(v) for k, v in categories.items()}} if categories else {}),
        "files": listing,
        "rows": sum(f["rows"] for f in listing.values()),
        "time_range": [min(times), max(times)] if times else None,
    }


def export_dataset(
    store: Store,
    cards: PublishedCards,
    labels: LabelSource,
    model: ModelRef,
    root: Path,
    out: Path | None = None,
) -> Dataset:
    """Write the data set of `model` to root/NAME/ID (or to the folder `out`); a data set with
    the same content already there is kept as it is."""
    card = serving_card(cards, model)
    files, times = dataset_files(store, card, list(labels.rows(model)))
    cats = card.input.categories if card.input.kind == "row" else {}
    manifest = build_manifest(model, card.feature_names, files, times, cats)
    folder = out if out is not None else root / model.name / manifest["id"]
    if (folder / MANIFEST).is_file():
        return Dataset(manifest["id"], folder, manifest)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dataset-", dir=folder.parent))
    try:
        for name, (data, _rows) in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if folder.exists():  # --out: an existing, empty folder
            for item in tmp.iterdir():
                os.replace(item, folder / item.name)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Dataset(manifest["id"], folder, manifest)


def _row_key(sample: RawSample) -> tuple[str, int, int] | None:
    """(device, boot, row) of the sample's prediction id, which labels name; None for a sample
    from an agent before prediction ids."""
    if sample.id is None:
        return None
    pid = parse_prediction_id(sample.id, "raw sample id")
    return pid.device, pid.boot, pid.row
