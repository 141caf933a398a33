"""Run every bench/*_bench.py with --json and write BENCHMARKS.md from what they printed.

Each bench prints one JSON object: `machine`, its figures (lists of flat rows under any key),
and `targets`: [{target, subject, value, limit, verdict}] where `target` starts with the
DESIGN.md row it checks ("what: target"). Nothing is copied by hand: the writer renders the
figures, the machine, the commands, and the table of every DESIGN.md performance target with
its measured figure, PASS/MISS and the margin (a target no bench measured says so).

    .venv/bin/python bench/make_benchmarks.py [--out BENCHMARKS.md] [--only rollout,buffer]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent

# DESIGN.md "Performance targets": (what, target), in its order and its words (a bench's target
# line starts with its row's `what`; tests/test_make_benchmarks.py checks the benches' lines)
DESIGN_TARGETS: list[tuple[str, str]] = [
    (
        "agent pipeline (parse, validate, infer, drift, telemetry) vs bare onnxruntime "
        "session.run, batch 1, small tabular model",
        "at least 0.7x the bare throughput; under a stream (micro-batches), at least 0.9x",
    ),
    (
        "telemetry end to end (agent buffer, broker, hub store, hub confirmation) vs bare paho "
        "QoS 0 publish of one small message each",
        "at least 3x more records per second (batching), QoS 1, zero loss",
    ),
    (
        "one hub on 2 cores, PostgreSQL store: devices each reporting once a second, stored "
        "exactly once",
        "5,000 devices (5x the load ThingsBoard reports for one 2-vCPU node), hub CPU under 70%",
    ),
    (
        "rollout of a 1 MB model to 100 simulated devices on loopback",
        "under 5 s; 20 MB to 100 devices completes",
    ),
    (
        "delta update of a fine-tuned model (same architecture, new weights)",
        "at most 30% of the full bundle's bytes",
    ),
    (
        "agent resident memory with onnxruntime and a small model loaded",
        "under 80 MB, and at most 10 MB above a bare numpy + onnxruntime process with the same "
        "model",
    ),
    (
        "agent cold start to first inference",
        "under 1 s, and at most 1.5x a bare onnxruntime process",
    ),
    ("int8 quantized MLP vs fp32", "at most 30% of the size, accuracy drop at most 1 point"),
    (
        "drift monitor on unshifted data, default window",
        "at most 1% of windows warn; a 0.5 standard deviation mean shift alerted within 3 windows",
    ),
]


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("`", "")).strip().lower()


def margin(value: Any, limit: Any) -> str:
    """How far a figure is from its limit ("< 10" or ">= 0.7"), as a percentage of the limit."""
    m = re.fullmatch(r"\s*(<=?|>=?)\s*([-+0-9.eE]+)\s*", str(limit))
    if m is None or not isinstance(value, int | float) or isinstance(value, bool):
        return ""
    bound = float(m.group(2))
    if bound == 0:
        return ""
    pct = (float(value) - bound) / abs(bound) * 100
    below = m.group(1).startswith("<")
    good = pct < 0 if below else pct >= 0
    side = "under" if pct < 0 else "over"
    return f"{abs(pct):.0f}% {side} the limit ({'inside' if good else 'outside'})"


def _figure(t: dict[str, Any]) -> str:
    if "value" in t:
        return f"{t['value']} ({t.get('subject', '')}, limit {t.get('limit', '?')})"
    extra = {k: v for k, v in t.items() if k not in ("target", "verdict")}
    return ", ".join(f"{k} {v}" for k, v in extra.items())


def target_rows(reports: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """One row per DESIGN.md target and measured subject; unmeasured targets say so."""
    rows = []
    for what, target in DESIGN_TARGETS:
        found = [
            (bench, t)
            for bench, report in reports.items()
            for t in report.get("targets", [])
            if _norm(str(t.get("target", ""))).startswith(_norm(what))
        ]
        if not found:
            rows.append(
                {
                    "what": what,
                    "target": target,
                    "measured": "not measured (no bench reported it)",
                    "verdict": "NOT MEASURED",
                    "margin": "",
                    "bench": "",
                }
            )
        for bench, t in found:
            rows.append(
                {
                    "what": what,
                    "target": target,
                    "measured": _figure(t),
                    "verdict": str(t.get("verdict", "?")),
                    "margin": margin(t.get("value"), t.get("limit")),
                    "bench": bench,
                }
            )
    return rows


def _cell(v: Any) -> str:
    text = json.dumps(v) if isinstance(v, dict | list) else str(v)
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "(no rows)\n"
    cols = columns or list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _row_lists(report: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The figures: every list of flat dicts in the report except the targets."""
    out = []
    for key, value in report.items():
        if key in ("targets", "machine") or not isinstance(value, list) or not value:
            continue
        if all(isinstance(r, dict) for r in value):
            flat = [{k: v for k, v in r.items() if not isinstance(v, list)} for r in value]
            out.append((key, flat))
    return out


def render(
    reports: dict[str, dict[str, Any]],
    machine: dict[str, Any],
    commands: dict[str, str],
    failures: dict[str, str],
    when: str,
) -> str:
    parts = [
        "# Benchmarks\n",
        f"Written by `bench/make_benchmarks.py` (`make bench`) on {when}; every figure below is "
        "what a bench printed with `--json` in that run. See bench/README.md for what each "
        "bench measures.\n",
        "## Machine\n",
        md_table([machine]),
        "## DESIGN.md performance targets\n",
        md_table(
            target_rows(reports), ["what", "target", "measured", "verdict", "margin", "bench"]
        ),
    ]
    notes = [
        f"- **{t['target'].split(':')[0]}** ({bench}): {t['note']}"
        for bench, report in reports.items()
        for t in report.get("targets", [])
        if t.get("note")
    ]
    if notes:
        parts += ["What the benches say about their targets:\n", "\n".join(notes) + "\n"]
    for bench, report in reports.items():
        parts.append(f"## {bench}\n")
        parts.append(f"Command: `{commands[bench]}`\n")
        for key, rows in _row_lists(report):
            parts.append(f"### {key}\n")
            parts.append(md_table(rows))
    if failures:
        parts.append("## Benches that failed\n")
        for bench, err in failures.items():
            parts.append(f"- `{commands[bench]}`: {err}\n")
    return "\n".join(parts)


def parse_output(stdout: str) -> dict[str, Any]:
    """The bench's JSON object (anything printed before its first `{` line is ignored)."""
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("{")), None)
    if start is None:
        raise ValueError("no JSON object in the output")
    report = json.loads("\n".join(lines[start:]))
    if not isinstance(report, dict):
        raise ValueError(f"expected a JSON object, got {type(report).__name__}")
    return report


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(BENCH_DIR))
    from bench_machine import help_line, machine

    parser = argparse.ArgumentParser(description=help_line(__doc__))
    parser.add_argument("--out", default="BENCHMARKS.md")
    parser.add_argument("--only", help="comma-separated bench names (e.g. rollout,buffer)")
    args = parser.parse_args(argv)

    benches = sorted(BENCH_DIR.glob("*_bench.py"))
    if args.only:
        wanted = set(args.only.split(","))
        benches = [b for b in benches if b.stem.removesuffix("_bench") in wanted]
    reports: dict[str, dict[str, Any]] = {}
    commands: dict[str, str] = {}
    failures: dict[str, str] = {}
    for path in benches:
        name = path.stem.removesuffix("_bench")
        commands[name] = f".venv/bin/python bench/{path.name} --json"
        print(f"make_benchmarks: running {path.name}", file=sys.stderr, flush=True)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, str(path), "--json"], capture_output=True, text=True, check=False
        )
        took = time.monotonic() - started
        try:
            if proc.returncode != 0:
                raise ValueError(f"exit status {proc.returncode}: {proc.stderr.strip()[-300:]}")
            reports[name] = parse_output(proc.stdout)
            print(f"make_benchmarks: {path.name} done in {took:.0f} s", file=sys.stderr)
        except ValueError as exc:
            failures[name] = str(exc)
            print(f"make_benchmarks: {path.name} failed: {exc}", file=sys.stderr)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    Path(args.out).write_text(render(reports, machine(), commands, failures, when))
    print(f"make_benchmarks: wrote {args.out}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
