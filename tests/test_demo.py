"""The whole product loop against a private mosquitto: `edgehub demo` with every step checked."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from rich.console import Console

from cloud_hub.broker.local import RunningBroker
from cloud_hub.cli import app as hub_cli
from cloud_hub.harness import demo as demo_module
from cloud_hub.harness.demo import DemoOptions, run_demo
from cloud_hub.store.url import STORE_ENV


@pytest.mark.broker
def test_demo_loop_verifies_every_step(broker: RunningBroker, tmp_path: Path) -> None:
    out = io.StringIO()
    code = run_demo(
        DemoOptions(
            seconds=2.0,
            workdir=tmp_path,
            broker_address=(broker.host, broker.port),
            console=Console(file=out, width=160),
        )
    )
    text = out.getvalue()
    logs = "\n".join(
        f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((tmp_path / "logs").glob("*.log"))
    )
    assert code == 0, text + logs
    for step in (
        "canary first",
        "verify before install",
        "drift",
        "tampered bundle",
        "old model keeps serving",
        "telemetry exactly once",
    ):
        assert step in text
    assert "demo passed" in text
    # not a terminal (a pipe, a log): plain lines as it goes, the live view prints none
    lines = text.splitlines()
    assert lines[0] == "demo: training a scikit-learn MLP on the breast cancer data set..."
    assert any(line.startswith("demo: canary first: ok") for line in lines), text
    assert "demo: hub ingesting the last records..." in lines


def test_the_demo_keeps_out_of_the_store_edgehub_store_names(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README has PostgreSQL users export EDGEHUB_STORE; a demo run then must not write its
    made-up devices, records and rollouts into their hub's database. Its hub, and every
    process it starts (they inherit the environment), keep a SQLite store in its folder."""
    seen: list[str | None] = []

    def demo(_opts: DemoOptions) -> int:
        seen.append(os.environ.get(STORE_ENV))
        return 0

    monkeypatch.setattr(demo_module, "run_demo", demo)
    monkeypatch.setenv(STORE_ENV, "postgresql://hub:s3cret@db.example/edgehub")
    assert hub_cli.main(["demo", "--seconds", "1"]) == 0
    assert seen == [None]
    out = capsys.readouterr().out
    assert "its hub keeps its own SQLite store in its folder, not EDGEHUB_STORE's" in out
    assert "s3cret" not in out
