"""Delta updates: how many bytes a device fetches for a fine-tuned model, as a share of the full
bundle, for our delta (edge_agent/update/delta.py) beside plain zstd with the old bundle as its
dictionary and bsdiff4, side by side in one run.

The model: an MLP on digits (64 features, 10 classes), trained on half of the training rows (the
old data). Each scenario makes the next version from it, same architecture, new weights:

- fine-tune: 5 epochs on the other half (the new data) at a tenth of training's learning rate
  (1e-4), every layer moving: the DESIGN.md target's case;
- head only: 20 epochs on the new data, only the output layer learning (the hidden layers are
  put back after each minibatch, as a frozen body);
- 5 epochs at training's rate (1e-3), and 20 epochs at that rate: the weights move further, to
  show where a delta stops paying.

Both versions go through `converters.pipeline.build_bundle` (convert, int8 dynamic or none,
validate, bundle), as the hub publishes them. Per pair:

- ours: `make_delta` (zstd, the old bundle as raw dictionary, blocks replaced by their
  byte-wise difference to the old bundle where that codes cheaper);
- zstd-dict: the same zstd settings without the block differences;
- bsdiff4: `bsdiff4.diff(old, new)` (skipped, and said, when bsdiff4 is not installed);
- deflated: zstd-dict between the same two bundles with the model file deflated, as bundles
  were written before deltas (it changes every byte after the first change); its full size
  says what storing the model costs a full download.

Shares are of the full bundle as it ships (model stored). Weight change: mean |new - old| /
mean |old| over every layer's weights. Accuracy: on a held-out fifth of digits. Two sizes:
MLP 256x256 (the int8 model is about 90 KB, as large as the deflated card beside it) and MLP
1024x1024 (about 1.1 MB). make s / apply ms: `make_delta` (hub) and `apply_delta` (device).

    .venv/bin/python bench/delta_bench.py          # table (about 2 minutes)
    .venv/bin/python bench/delta_bench.py --json   # the same figures as JSON

The DESIGN.md target checked: delta update of a fine-tuned model (same architecture, new
weights), at most 30% of the full bundle's bytes (the fine-tune scenario, int8 dynamic, MLP
256x256).
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import zstandard
from bench_machine import help_line, machine
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from converters.pipeline import build_bundle
from edge_agent.protocol.frozen import frozen
from edge_agent.update.delta import LEVEL, apply_delta, make_delta

try:
    import bsdiff4
except ImportError:  # the dev extra installs it; the bench says when it is missing
    bsdiff4 = None

SEED = 0
TARGET_LINE = (
    "delta update of a fine-tuned model (same architecture, new weights): at most 30% of the "
    "full bundle's bytes"
)
TARGET_SHARE = 0.30
TARGET_CASE = ("MLP 256x256", "fine-tune", "dynamic")
SIZES = {"MLP 256x256": (256, 256), "MLP 1024x1024": (1024, 1024)}
QUANTIZE = ("dynamic", "none")
MIN_PIPED_WIDTH = 170

Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@frozen
class Row:
    model: str
    scenario: str
    quantize: str
    weight_change: float
    accuracy_old: float
    accuracy_new: float
    full_bytes: int
    full_deflated_bytes: int
    ours_bytes: int
    ours_share: float
    zstd_dict_share: float
    bsdiff4_share: float | None
    deflated_zstd_dict_share: float
    make_s: float
    apply_s: float


# --- data and models ---------------------------------------------------------------------------


def data() -> Data:
    """(old x, old y, new x, new y, test x, test y) from digits, seeded."""
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=SEED
    )
    x_old, x_new, y_old, y_new = train_test_split(
        x_train, y_train, test_size=0.5, stratify=y_train, random_state=SEED
    )
    return x_old, y_old, x_new, y_new, x_test, y_test


def fine_tune(base: MLPClassifier, x: np.ndarray, y: np.ndarray, epochs: int, rate: float) -> Any:
    """`epochs` more epochs of every layer on (x, y) at learning rate `rate`."""
    model = copy.deepcopy(base)
    model.set_params(
        warm_start=True, learning_rate_init=rate, max_iter=epochs, n_iter_no_change=10**6, tol=0.0
    )
    return model.fit(x, y)


def head_only(base: MLPClassifier, x: np.ndarray, y: np.ndarray, epochs: int) -> Any:
    """`epochs` epochs on (x, y) in which only the output layer learns."""
    model = copy.deepcopy(base)
    body_w = [w.copy() for w in model.coefs_[:-1]]
    body_b = [b.copy() for b in model.intercepts_[:-1]]
    rng = np.random.default_rng(SEED)
    batch = 200  # what MLPClassifier's batch_size="auto" takes
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch):
            rows = order[start : start + batch]
            model.partial_fit(x[rows], y[rows])
            model.coefs_[:-1] = [w.copy() for w in body_w]
            model.intercepts_[:-1] = [b.copy() for b in body_b]
    return model


SCENARIOS: dict[str, Callable[[MLPClassifier, np.ndarray, np.ndarray], Any]] = {
    "fine-tune": lambda m, x, y: fine_tune(m, x, y, 5, 1e-4),
    "head only": lambda m, x, y: head_only(m, x, y, 20),
    "5 epochs at 1e-3": lambda m, x, y: fine_tune(m, x, y, 5, 1e-3),
    "20 epochs at 1e-3": lambda m, x, y: fine_tune(m, x, y, 20, 1e-3),
}


def weight_change(old: MLPClassifier, new: MLPClassifier) -> float:
    """Mean |new - old| / mean |old| over every layer's weights."""
    a = np.concatenate([w.ravel() for w in old.coefs_])
    b = np.concatenate([w.ravel() for w in new.coefs_])
    return float(np.abs(b - a).mean() / np.abs(a).mean())


# --- bundles and deltas ------------------------------------------------------------------------


def bundle(model: Any, d: Data, version: int, quantize: str, folder: Path) -> bytes:
    x = np.concatenate([d[0], d[2]])
    y = np.concatenate([d[1], d[3]])
    out = folder / f"digits-{version}-{quantize}.zip"
    # force: the bench measures bytes; a quantized version a point off parity is still a version
    build_bundle(
        model, x, y, name="digits", version=version, out=out, quantize=quantize, force=True
    )
    return out.read_bytes()


def deflated(data: bytes) -> bytes:
    """The same bundle with every member deflated (how bundles were written before deltas)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buf, "w") as out:
        for info in src.infolist():
            content = src.read(info.filename)
            info.compress_type = zipfile.ZIP_DEFLATED
            out.writestr(info, content)
    return buf.getvalue()


def zstd_dict(base: bytes, result: bytes) -> int:
    """Bytes of zstd with `base` as raw-content dictionary, the settings `make_delta` uses."""
    params = zstandard.ZstdCompressionParameters.from_level(
        LEVEL,
        window_log=min(max((len(base) + len(result)).bit_length(), 20), 30),
        enable_ldm=True,
    )
    raw = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return len(zstandard.ZstdCompressor(dict_data=raw, compression_params=params).compress(result))


def measure(
    name: str, scenario: str, quantize: str, pair: tuple[Any, Any], d: Data, folder: Path
) -> Row:
    old_model, new_model = pair
    old, new = bundle(old_model, d, 1, quantize, folder), bundle(new_model, d, 2, quantize, folder)
    started = time.perf_counter()
    delta = make_delta(old, new)
    made = time.perf_counter() - started
    started = time.perf_counter()
    assert apply_delta(old, delta, len(new)) == new
    applied = time.perf_counter() - started
    old_deflated, new_deflated = deflated(old), deflated(new)
    return Row(
        model=name,
        scenario=scenario,
        quantize=quantize,
        weight_change=weight_change(old_model, new_model),
        accuracy_old=float(old_model.score(d[4], d[5])),
        accuracy_new=float(new_model.score(d[4], d[5])),
        full_bytes=len(new),
        full_deflated_bytes=len(new_deflated),
        ours_bytes=len(delta),
        ours_share=len(delta) / len(new),
        zstd_dict_share=zstd_dict(old, new) / len(new),
        bsdiff4_share=len(bsdiff4.diff(old, new)) / len(new) if bsdiff4 is not None else None,
        deflated_zstd_dict_share=zstd_dict(old_deflated, new_deflated) / len(new),
        make_s=made,
        apply_s=applied,
    )


def run() -> list[Row]:
    d = data()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name, hidden in SIZES.items():
            base = MLPClassifier(hidden_layer_sizes=hidden, max_iter=300, random_state=SEED)
            base.fit(d[0], d[1])
            for scenario, make in SCENARIOS.items():
                pair = (base, make(base, d[2], d[3]))
                for quantize in QUANTIZE:
                    rows.append(measure(name, scenario, quantize, pair, d, Path(tmp)))
    return rows


# --- report ------------------------------------------------------------------------------------


def target_verdicts(rows: list[Row]) -> list[dict[str, Any]]:
    row = next(r for r in rows if (r.model, r.scenario, r.quantize) == TARGET_CASE)
    misses = [
        f"{r.model} {r.scenario} {r.quantize} {r.ours_share:.0%}"
        for r in rows
        if r.ours_share > TARGET_SHARE
    ]
    return [
        {
            "target": TARGET_LINE,
            "subject": f"{row.model}, {row.scenario} (5 epochs at 1e-4), int8 {row.quantize}: "
            "delta bytes / full bundle bytes",
            "value": round(row.ours_share, 4),
            "limit": f"<= {TARGET_SHARE}",
            "verdict": "PASS" if row.ours_share <= TARGET_SHARE else "MISS",
            "note": "over 30% in the other rows: " + "; ".join(misses)
            if misses
            else "every row within 30%",
        }
    ]


def print_table(info: dict[str, Any], rows: list[Row], verdicts: list[dict[str, Any]]) -> None:
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, MIN_PIPED_WIDTH)
    console.print(
        f"[bold]machine[/bold]  {info['cpu']}, {info['cores']} cores, Python {info['python']}, "
        f"zstandard {info['zstandard']}, bsdiff4 {info['bsdiff4']}"
    )
    grid = Table(title="delta bytes as a share of the full bundle", title_justify="left")
    for title in (
        "model",
        "scenario",
        "quantize",
        "Δw",
        "acc old→new",
        "full KiB",
        "ours",
        "zstd-dict",
        "bsdiff4",
        "deflated",
        "full deflated KiB",
        "make s",
        "apply ms",
    ):
        grid.add_column(title, justify="left" if title in ("model", "scenario") else "right")
    for r in rows:
        grid.add_row(
            r.model,
            r.scenario,
            r.quantize,
            f"{r.weight_change:.1%}",
            f"{r.accuracy_old:.3f}→{r.accuracy_new:.3f}",
            f"{r.full_bytes / 1024:,.1f}",
            f"{r.ours_share:.1%}",
            f"{r.zstd_dict_share:.1%}",
            "-" if r.bsdiff4_share is None else f"{r.bsdiff4_share:.1%}",
            f"{r.deflated_zstd_dict_share:.1%}",
            f"{r.full_deflated_bytes / 1024:,.1f}",
            f"{r.make_s:.2f}",
            f"{r.apply_s * 1000:.1f}",
        )
    console.print(grid)
    for v in verdicts:
        style = "green" if v["verdict"] == "PASS" else "red"
        console.print(f"target: {v['target']}", markup=False)
        console.print(
            f"  {v['subject']}: {v['value']:.1%} -> [bold {style}]{v['verdict']}[/bold {style}]"
        )
        console.print(f"  {v['note']}", markup=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=help_line(__doc__))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    rows = run()
    info = machine(
        **{"scikit-learn": sklearn.__version__},
        zstandard=zstandard.__version__,
        bsdiff4=getattr(bsdiff4, "__version__", "not installed"),
    )
    verdicts = target_verdicts(rows)
    if args.json:
        print(
            json.dumps(
                {
                    "machine": info,
                    "setup": {"dataset": "digits", "seed": SEED, "zstd_level": LEVEL},
                    "rows": [asdict(r) for r in rows],
                    "targets": verdicts,
                },
                indent=2,
            )
        )
    else:
        print_table(info, rows, verdicts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
