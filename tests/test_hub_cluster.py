"""Two `edgehub serve` workers on one PostgreSQL: both ingest (a shared subscription), one leads
(an advisory lock). SIGKILL the leader: the other leads within seconds, and every record the
device sent before, during and after is stored exactly once, counted in the database."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from cloud_hub.broker.local import RunningBroker
from cloud_hub.cli.app import main
from cloud_hub.cluster.leader import AdvisoryLock, FileLock
from cloud_hub.harness.commands import serve_argv
from cloud_hub.store.url import STORE_ENV
from tests.support.device_rig import Device
from tests.support.postgres import fresh_database
from tests.support.processes import Lines, launch, processes  # noqa: F401 (a fixture)

pytestmark = pytest.mark.broker
DEVICE = "pi-01"
K = 60
LEADS = "this worker leads"
HANDOVER_S = 10.0


@pytest.fixture
def pg(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with fresh_database() as url:
        monkeypatch.setenv(STORE_ENV, url)
        yield url


def _stored(url: str) -> list[int]:
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            rows = c.execute(
                text("select seq from records where kind = 'telemetry' and device = :d"),
                {"d": DEVICE},
            )
            return sorted(r[0] for r in rows)
    finally:
        engine.dispose()


def _drained(device: Device) -> None:
    deadline = time.monotonic() + 30
    while not device.sender.idle():
        assert time.monotonic() < deadline, f"{device.buffer.pending()} never confirmed"
        device.sender.wake.wait(0.1)


def test_the_leader_dies_the_other_leads_and_no_record_is_lost(
    pg: str,
    broker: RunningBroker,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    home = tmp_path / "hub"
    assert main(["--home", str(home), "keys", "init"]) == 0
    workers, logs = [], []
    for name in ("a", "b"):
        argv = serve_argv(home, "127.0.0.1", broker.port, "--http", "off", "-v")
        proc = launch(processes, *argv, "--share", "hubs", "--client-id", f"edgehub-{name}")
        workers.append(proc)
        logs.append(Lines(proc.stderr))  # type: ignore[arg-type]
        Lines(proc.stdout).expect("serving")  # type: ignore[arg-type]
    verdicts = [said.expect("this worker") for said in logs]  # each worker's first tick
    assert sorted(LEADS in v for v in verdicts) == [False, True], verdicts
    leader = 0 if LEADS in verdicts[0] else 1

    device = Device(broker, tmp_path / "rig", DEVICE)
    try:
        device.start()
        device.record(K)
        _drained(device)
        workers[leader].kill()  # SIGKILL: no goodbye, its session and lock just end
        workers[leader].wait(30)
        killed_at = time.monotonic()
        device.record(K)  # while the other takes over
        logs[1 - leader].expect(LEADS)
        handover = time.monotonic() - killed_at
        device.record(K)
        _drained(device)
    finally:
        device.close()
    assert handover < HANDOVER_S, f"the lead moved after {handover:.1f} s"
    assert _stored(pg) == list(range(3 * K)), "missing or repeated records"


def test_one_advisory_lock_at_a_time_and_it_goes_with_its_session(pg: str) -> None:
    engine = create_engine(pg)
    first, second = AdvisoryLock(engine), AdvisoryLock(engine)
    try:
        assert first.leads() and first.leads()
        assert not second.leads()
        first.close()
        assert second.leads()
        assert not first.leads()
    finally:
        first.close()
        second.close()
        engine.dispose()


def test_workers_sharing_a_home_on_sqlite_take_turns(tmp_path: Path) -> None:
    first, second = FileLock(tmp_path), FileLock(tmp_path)
    assert first.leads() and not second.leads()
    first.close()
    assert second.leads() and not first.leads()
    second.close()
