"""int8 vs float32 ONNX, side by side in one run: size, held-out accuracy, batch-1 and batch-32
latency through the agent's own runtime (`edge_agent.inference.runtime.OnnxRuntime`, one thread, as
on a
device).

Two models, both on digits (64 features, 10 classes), split 70/30 with a fixed seed:
- an MLP (StandardScaler + MLPClassifier (256, 256)): what int8 is for;
- a tree ensemble (RandomForestClassifier, 50 trees): nothing for onnxruntime to quantize (no
  MatMul weights), so its int8 artifacts are the float32 graph; the table says so.

Each is converted with `SklearnSource(est).convert(x_train, mode)` for none, dynamic and static
(static calibrates on the training rows). Latency: the three variants of a model are warmed
up, then timed interleaved (each repetition runs each variant once on the same batch, in a fresh
seeded random order), time.perf_counter around one `predict`, the median reported.

    .venv/bin/python bench/quantize_bench.py          # table
    .venv/bin/python bench/quantize_bench.py --json   # the same figures as JSON

The DESIGN.md target checked: int8 quantized MLP vs fp32, at most 30% of the size, accuracy
drop at most 1 point.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
import skl2onnx
import sklearn
from bench_machine import help_line, machine
from rich.console import Console, JustifyMethod
from rich.table import Table
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from converters.sklearn_onnx import SklearnSource
from edge_agent.inference.runtime import OnnxRuntime
from edge_agent.protocol.frozen import frozen

MODES = ("none", "dynamic", "static")
SEED = 0
TEST_SIZE = 0.3
WARMUP = 50
REPS_BATCH_1 = 5000
REPS_BATCH_32 = 1000
BATCH = 32
TARGET_SIZE_RATIO = 0.30  # DESIGN.md: int8 MLP at most 30% of the fp32 size
TARGET_MAX_DROP_POINTS = 1.0  # ... and accuracy drop at most 1 point
MIN_PIPED_WIDTH = 150
MLP = "MLP 256x256"
FOREST = "RandomForest 50"
TARGET_LINE = "int8 quantized MLP vs fp32: at most 30% of the size, accuracy drop at most 1 point"


@dataclass
class Variant:
    model: str
    mode: str
    size_bytes: int
    accuracy: float
    graph: str  # what the int8 pass did to the graph
    note: str
    runtime: OnnxRuntime = field(repr=False)
    predictions: np.ndarray = field(repr=False)
    p50_batch1_us: float = 0.0
    p50_batch32_us: float = 0.0


@frozen
class Row:
    """One line of the table (and of --json): a variant against its model's float32."""

    model: str
    mode: str
    size_bytes: int
    size_ratio: float
    accuracy: float
    accuracy_drop_points: float
    label_agreement: float
    p50_batch1_us: float
    latency_ratio_batch1: float
    p50_batch32_us: float
    latency_ratio_batch32: float
    graph: str
    note: str


# --- machine ---------------------------------------------------------------------------------


# --- models and variants ---------------------------------------------------------------------


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, stratify=y, random_state=SEED
    )
    return x_train.astype(np.float32), x_test.astype(np.float32), y_train, y_test


def models() -> dict[str, Any]:
    return {
        MLP: make_pipeline(
            StandardScaler(),
            MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=300, random_state=SEED),
        ),
        FOREST: RandomForestClassifier(n_estimators=50, max_depth=12, random_state=SEED),
    }


def graph_kind(model_bytes: bytes) -> str:
    """What int8 did: dynamic (MatMulInteger), QDQ with or without quantized activations."""
    graph = onnx.load_from_string(model_bytes).graph
    ops = [node.op_type for node in graph.node]
    weights = {i.name for i in graph.initializer}
    if "MatMulInteger" in ops:
        return "int8 W, int8 A (dynamic)"
    if "DequantizeLinear" in ops:
        activations = [
            n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in weights
        ]
        return "QDQ int8 W, uint8 A" if activations else "QDQ int8 W, float A"
    return "float32"


def variants(
    name: str, estimator: Any, x_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> list[Variant]:
    source = SklearnSource(estimator)
    out = []
    for mode in MODES:
        artifact = source.convert(x_train, mode)
        runtime = OnnxRuntime(artifact.model_bytes)
        predictions = runtime.predict(x_test)
        out.append(
            Variant(
                model=name,
                mode=mode,
                size_bytes=len(artifact.model_bytes),
                accuracy=float(np.mean(predictions == y_test)),
                graph=graph_kind(artifact.model_bytes),
                note=artifact.note,
                runtime=runtime,
                predictions=predictions,
            )
        )
    return out


# --- latency ---------------------------------------------------------------------------------


def p50_us(
    runtimes: list[OnnxRuntime], batches: list[np.ndarray], reps: int, rng: np.random.Generator
) -> list[float]:
    """Median wall time (µs) of one predict per runtime. After a warm-up of each, every
    repetition runs each runtime once on the same batch, in a fresh random order (so no variant
    always follows the same one and inherits its cache state)."""
    for runtime in runtimes:
        for i in range(WARMUP):
            runtime.predict(batches[i % len(batches)])
    times: list[list[float]] = [[] for _ in runtimes]
    for rep in range(reps):
        batch = batches[rep % len(batches)]
        for j in rng.permutation(len(runtimes)):
            run = runtimes[j].predict
            start = time.perf_counter()
            run(batch)
            times[j].append(time.perf_counter() - start)
    return [statistics.median(t) * 1e6 for t in times]


def measure_latency(group: list[Variant], x_test: np.ndarray) -> None:
    """Batch-1 and batch-32 p50 of the variants of one model, measured interleaved."""
    rng = np.random.default_rng(SEED)
    runtimes = [v.runtime for v in group]
    singles = [np.ascontiguousarray(x_test[i : i + 1]) for i in range(len(x_test))]
    blocks = [
        np.ascontiguousarray(x_test[i : i + BATCH])
        for i in range(0, len(x_test) - BATCH + 1, BATCH)
    ]
    for v, t in zip(group, p50_us(runtimes, singles, REPS_BATCH_1, rng), strict=True):
        v.p50_batch1_us = t
    for v, t in zip(group, p50_us(runtimes, blocks, REPS_BATCH_32, rng), strict=True):
        v.p50_batch32_us = t


# --- report ----------------------------------------------------------------------------------


def rows(all_variants: list[Variant]) -> list[Row]:
    fp32 = {v.model: v for v in all_variants if v.mode == "none"}
    out = []
    for v in all_variants:
        base = fp32[v.model]
        out.append(
            Row(
                model=v.model,
                mode=v.mode,
                size_bytes=v.size_bytes,
                size_ratio=v.size_bytes / base.size_bytes,
                accuracy=v.accuracy,
                accuracy_drop_points=(base.accuracy - v.accuracy) * 100,
                label_agreement=float(np.mean(v.predictions == base.predictions)),
                p50_batch1_us=v.p50_batch1_us,
                latency_ratio_batch1=v.p50_batch1_us / base.p50_batch1_us,
                p50_batch32_us=v.p50_batch32_us,
                latency_ratio_batch32=v.p50_batch32_us / base.p50_batch32_us,
                graph=v.graph,
                note=v.note,
            )
        )
    return out


def target_verdicts(table: list[Row], mlp: str) -> list[dict[str, Any]]:
    verdicts = []
    for row in table:
        if row.model != mlp or row.mode == "none":
            continue
        ok = (
            row.size_ratio <= TARGET_SIZE_RATIO
            and row.accuracy_drop_points <= TARGET_MAX_DROP_POINTS
        )
        verdicts.append(
            {
                "target": TARGET_LINE,
                "mode": row.mode,
                "size_ratio": row.size_ratio,
                "accuracy_drop_points": row.accuracy_drop_points,
                "verdict": "PASS" if ok else "MISS",
            }
        )
    return verdicts


def print_table(info: dict[str, Any], table: list[Row], verdicts: list[dict[str, Any]]) -> None:
    console = Console()
    if not console.is_terminal:  # piped or logged: no width to fit, keep rows on one line
        console.width = max(console.width, MIN_PIPED_WIDTH)
    cores = f"{info['cores']} cores" + (
        f" ({info['cores_usable']} usable)" if info["cores_usable"] != info["cores"] else ""
    )
    console.print(f"[bold]machine[/bold]  {info['cpu']}, {cores}, Python {info['python']}")
    console.print(
        f"[bold]versions[/bold] onnxruntime {info['onnxruntime']}, scikit-learn "
        f"{info['scikit-learn']}, skl2onnx {info['skl2onnx']}; runtime threads "
        f"{info['runtime_threads']}"
    )
    console.print(
        f"[bold]data[/bold]     digits, {int(TEST_SIZE * 100)}% held out (seed {SEED}); latency "
        f"p50 of {REPS_BATCH_1} (batch 1) and {REPS_BATCH_32} (batch {BATCH}) interleaved "
        f"OnnxRuntime.predict calls"
    )
    grid = Table(title="int8 vs float32 ONNX", title_justify="left")
    columns: list[tuple[str, JustifyMethod]] = [
        ("model", "left"),
        ("quantize", "left"),
        ("size KiB", "right"),
        ("size/fp32", "right"),
        ("accuracy", "right"),
        ("drop pts", "right"),
        ("agree", "right"),
        ("b1 µs", "right"),
        ("b1/fp32", "right"),
        (f"b{BATCH} µs", "right"),
        (f"b{BATCH}/fp32", "right"),
        ("graph", "left"),
    ]
    for title, justify in columns:
        grid.add_column(title, justify=justify, no_wrap=True)
    notes: list[str] = []
    for row in table:
        graph = row.graph
        if row.note:
            if row.note not in notes:
                notes.append(row.note)
            graph = f"{graph}, unchanged [{notes.index(row.note) + 1}]"
        grid.add_row(
            row.model,
            row.mode,
            f"{row.size_bytes / 1024:,.1f}",
            f"{row.size_ratio:.3f}",
            f"{row.accuracy:.4f}",
            f"{row.accuracy_drop_points:+.2f}",
            f"{row.label_agreement:.4f}",
            f"{row.p50_batch1_us:.1f}",
            f"{row.latency_ratio_batch1:.2f}",
            f"{row.p50_batch32_us:.1f}",
            f"{row.latency_ratio_batch32:.2f}",
            graph,
            end_section=row.mode == MODES[-1],
        )
    console.print(grid)
    for i, note in enumerate(notes, 1):
        console.print(f"[{i}] {note}", markup=False)
    console.print("W: weights, A: activations")
    console.print(f"target: {TARGET_LINE}")
    for v in verdicts:
        style = "green" if v["verdict"] == "PASS" else "red"
        console.print(
            f"  {v['mode']}: size {v['size_ratio']:.1%} of fp32, accuracy drop "
            f"{v['accuracy_drop_points']:.2f} points -> [bold {style}]{v['verdict']}[/bold {style}]"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=help_line(__doc__))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    x_train, x_test, y_train, y_test = data()
    all_variants: list[Variant] = []
    for name, estimator in models().items():
        estimator.fit(x_train, y_train)
        group = variants(name, estimator, x_train, x_test, y_test)
        measure_latency(group, x_test)
        all_variants.extend(group)

    info = machine(
        **{"scikit-learn": sklearn.__version__}, skl2onnx=skl2onnx.__version__, runtime_threads=1
    )
    table = rows(all_variants)
    verdicts = target_verdicts(table, MLP)
    if args.json:
        print(
            json.dumps(
                {
                    "machine": info,
                    "setup": {
                        "dataset": "digits",
                        "test_rows": len(x_test),
                        "seed": SEED,
                        "reps_batch_1": REPS_BATCH_1,
                        "reps_batch_32": REPS_BATCH_32,
                    },
                    "rows": [asdict(r) for r in table],
                    "targets": verdicts,
                },
                indent=2,
            )
        )
    else:
        print_table(info, table, verdicts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
