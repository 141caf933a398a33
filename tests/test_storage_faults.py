"""Promise 3 against the device's own disk: a state folder that fills up or is read-only kills
nothing. Real `edge-agent run` processes whose state folder is a small tmpfs (filled by the test
with a file, then freed; remounted read-only, then read-write), a private mosquitto, the hub
in-process (tests/support/agent_process.py's Rig), and an independent paho subscriber (the Rig's
watcher). What the hub holds is counted in its store; what the agent accepted, in its buffer's
files read as plain text (tests/support/buffer_files.py)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from cloud_hub.cli import app as hub_cli
from cloud_hub.rollout.operations import enroll_device, init_hub
from cloud_hub.web.metrics import registry_for
from edge_agent.agent import Agent, last_boot
from edge_agent.config import load_config
from tests.conftest import Tmpfs
from tests.support.agent_process import (  # noqa: F401  (bundles and rig are fixtures)
    DEVICE,
    Rig,
    _pending_count,
    _until,
    bundles,
    every_record_once,
    rig,
)
from tests.support.buffer_files import held
from tests.support.fleet import Fleet, fleet  # noqa: F401  (a fixture)

pytestmark = pytest.mark.broker
Mount = Callable[[Path, str], Tmpfs]
FAULT_LINE = "storage: cannot write the "
BACK_LINE = "storage: writable again after"
RECONNECT_S = 90.0  # the agent's reconnect backoff may wait up to 60 s after a broker outage


def _storage(status: dict[str, Any]) -> dict[str, Any]:
    return dict((status.get("stats") or {}).get("storage") or {})


def _hub_storage(at: Rig) -> dict[str, Any]:
    return _storage(at.hub_device())


def _alive(at: Rig, proc: Any) -> None:
    assert proc.poll() is None, f"the agent died (exit {proc.returncode})\n{at.logs()}"


def _log_count(at: Rig, text: str) -> int:
    return sum(p.read_text(errors="replace").count(text) for p in at.tmp.glob("agent-*.log"))


def _hub_shows(at: Rig, capsys: pytest.CaptureFixture[str]) -> tuple[bool, str | None]:
    """What `edgehub devices list --json` and /metrics say of the device's storage (they must
    agree): (ok, the first reason)."""
    counter = f'edgefleet_device_unkept_records_total{{device="{DEVICE}",kind="telemetry"}} '

    def unkept_in_metrics() -> tuple[str, float]:
        metrics = generate_latest(registry_for(at.hub.store)).decode()
        line = next((ln for ln in metrics.splitlines() if ln.startswith(counter)), counter + "0")
        return metrics, float(line[len(counter) :])

    # the device keeps reporting while we read: the unkept count may grow between two reads, so
    # the list's must lie between what /metrics said just before and just after
    capsys.readouterr()
    _, before = unkept_in_metrics()
    assert hub_cli.main(["--home", str(at.home), "devices", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    storage = listed["storage"]
    metrics, after = unkept_in_metrics()
    gauge = f'edgefleet_device_storage_ok{{device="{DEVICE}"}} {1.0 if storage["ok"] else 0.0}'
    assert gauge in metrics, metrics
    assert before <= storage["unkept"].get("telemetry", 0) <= after, (before, storage, after)
    return storage["ok"], (storage["reasons"] or [None])[0]


def test_a_state_folder_that_fills_and_frees_is_survived_and_reported(
    tmpfs: Mount,
    rig: Rig,  # noqa: F811
    bundles: dict[int, Path],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    disk = tmpfs(rig.state, "16m")  # room for a backlog of a few thousand records
    text = rig.config.read_text()  # every inferred row also kept raw (200 a second): the
    tuned = "[telemetry]\nraw_sample_rate = 1.0\ndrain_rate = 2000\n"  # buffer grows fast
    rig.config.write_text(text.replace("[telemetry]\n", tuned))
    rig.preinstall(bundles[1], 1)
    agent = rig.start_agent()
    rig.hub_wait("records at the hub", lambda: len(rig.hub_keys()) >= 50)
    assert _hub_storage(rig)["ok"] is True

    # The broker away a moment: a backlog in the buffer, records the agent accepted before the
    # disk fills. They drain while it is full (the hub drops what comes twice) and after.
    rig.broker.stop()
    _until("a backlog while the broker is down", lambda: _pending_count(rig.state) >= 200)
    disk.fill()
    rig.broker.restart()
    _until("the agent to say the disk is full", lambda: _log_count(rig, FAULT_LINE))
    rig.hub_wait(
        "the hub to hear of the full disk",
        lambda: (
            _hub_storage(rig).get("ok") is False
            and _hub_storage(rig).get("unkept", {}).get("telemetry", 0) > 0
        ),
        timeout=RECONNECT_S,
    )
    condition = _hub_storage(rig)
    assert "disk full" in condition["error"] and "buffer" in condition["error"]
    assert condition["since"] > 0
    w = rig.watcher  # an independent subscriber sees the same in the retained status
    w.wait("the status to say so", lambda: _storage(w.status).get("ok") is False)
    assert rig.hub_device()["stats"]["inferences"] > 0  # inferring all along
    assert _hub_shows(rig, capsys) == (False, "disk-full")
    _alive(rig, agent)

    # Space returns: kept again without a restart, and the first records kept say what was lost.
    disk.free()
    rig.hub_wait("the hub to hear it is over", lambda: _hub_storage(rig).get("ok") is True)
    rig.hub_wait(
        "a telemetry record reporting what could not be kept",
        lambda: any(
            r.body.get("storage", {}).get("unkept", {}).get("telemetry", 0) > 0
            for r in rig.hub.store.records("telemetry", DEVICE)[-200:]
        ),
    )
    unkept = _hub_storage(rig)["unkept"]["telemetry"]
    assert unkept > 0
    assert _hub_shows(rig, capsys) == (True, None)
    before = len(rig.hub_keys())
    rig.hub_wait("new records after the fault", lambda: len(rig.hub_keys()) >= before + 50)
    _alive(rig, agent)

    code, _ = rig.stop_agent(agent)
    assert code == 0, rig.logs()
    keys = every_record_once(rig, boots=(1,))  # every record the agent accepted, once
    assert {b for b, _ in keys} == {1}
    assert _log_count(rig, FAULT_LINE) == 1, rig.logs()  # said once, not once per record
    assert _log_count(rig, BACK_LINE) == 1, rig.logs()


def test_a_read_only_state_folder_at_start_is_survived_and_nothing_reuses_a_boot(
    tmpfs: Mount,
    rig: Rig,  # noqa: F811
    bundles: dict[int, Path],  # noqa: F811
) -> None:
    """Boot 1 runs and stops. The disk is read-only when the agent starts again: it cannot
    persist boot 2, so it keeps nothing (records under boot 1 again would be dropped by the
    hub as repeats), infers and says so. Once the disk is writable it persists boot 2 and
    keeps records under it."""
    disk = tmpfs(rig.state, "2m")
    rig.preinstall(bundles[1], 1)
    first = rig.start_agent()
    rig.hub_wait("boot 1 at the hub", lambda: rig.telemetry_with_inferences(1) >= 3)
    code, _ = rig.stop_agent(first)
    assert code == 0, rig.logs()

    disk.remount(read_only=True)
    agent = rig.start_agent()
    w = rig.watcher
    w.wait(
        "a status saying the state folder is read-only, from an agent that infers",
        lambda: (
            w.status.get("boot") == 2
            and _storage(w.status).get("ok") is False
            and _storage(w.status).get("unkept", {}).get("telemetry", 0) >= 3
            and w.status["stats"].get("inferences", 0) > 0
        ),
    )
    assert "read-only" in _storage(w.status)["error"], w.status
    rig.hub_wait("the hub to hear it", lambda: _hub_storage(rig).get("ok") is False)
    assert not [k for k in rig.hub_keys() if k[0] != 1]  # nothing kept under an unsaved boot
    assert last_boot(rig.state) == 1
    _alive(rig, agent)

    disk.remount(read_only=False)
    rig.hub_wait("boot 2 records at the hub", lambda: rig.telemetry_with_inferences(2) >= 3)
    rig.hub_wait("the status to say it is over", lambda: _hub_storage(rig).get("ok") is True)
    assert last_boot(rig.state) == 2
    first_kept = next(r for r in rig.hub.store.records("telemetry", DEVICE) if r.boot == 2)
    assert first_kept.body["storage"]["unkept"]["telemetry"] >= 3
    _alive(rig, agent)

    code, _ = rig.stop_agent(agent)
    assert code == 0, rig.logs()
    every_record_once(rig, boots=(1, 2))
    assert _log_count(rig, FAULT_LINE) == 1, rig.logs()  # the boot counter and status.json
    assert _log_count(rig, BACK_LINE) == 1, rig.logs()  # both read-only: one condition


def test_a_sender_whose_take_raises_goes_on_sending(
    fleet: Fleet,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception in the sender is logged once with its traceback, and uploads go on."""
    agent, hub = fleet.agent, fleet.hub
    real_take = agent.buffer.take
    raised = threading.Event()

    def take_raising_once(limit: int, skip: set[int]) -> Any:
        if not raised.is_set():
            raised.set()
            raise RuntimeError("the buffer's take failed")
        return real_take(limit, skip)

    agent.buffer.take = take_raising_once  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="edge_agent.guard"):
        for i in range(30):
            agent.keep("telemetry", {"n": i, "count": 0})
        with hub.handled:
            assert hub.handled.wait_for(lambda: hub.store.count("telemetry", DEVICE) == 30, 30)
    assert raised.is_set()
    guarded = [r for r in caplog.records if r.name == "edge_agent.guard"]
    assert len(guarded) == 1 and guarded[0].exc_info, guarded
    assert "sender failed, going on: the buffer's take failed" in guarded[0].getMessage()
    assert sorted(r.body["n"] for r in hub.store.records("telemetry", DEVICE)) == list(range(30))


def test_a_main_loop_step_that_raises_is_logged_once_and_the_loop_goes_on(
    fleet: Fleet,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent, w = fleet.agent, fleet.watcher
    real_flush = agent.pipeline.flush_window
    raised_at: list[float] = []

    def flush_raising_once() -> None:
        if not raised_at:
            raised_at.append(time.time())
            raise RuntimeError("closing the window failed")
        real_flush()

    with caplog.at_level(logging.ERROR, logger="edge_agent.guard"):
        agent.pipeline.flush_window = flush_raising_once  # type: ignore[method-assign]
        w.wait(
            "statuses after the failure",
            lambda: bool(raised_at) and w.status.get("ts", 0) > raised_at[0] + 1.0,
        )
    guarded = [r for r in caplog.records if r.name == "edge_agent.guard"]
    assert len(guarded) == 1 and guarded[0].exc_info, guarded
    assert "main loop failed, going on: closing the window failed" in guarded[0].getMessage()
    assert w.status["online"] is True


def test_a_status_file_that_cannot_be_replaced_is_reported_and_records_go_on(
    tmpfs: Mount,
    rig: Rig,  # noqa: F811
    bundles: dict[int, Path],  # noqa: F811
) -> None:
    """EPERM on status.json (made immutable: root cannot replace it either). The buffer is
    fine, so records are kept and say so too; the status over MQTT says what is wrong."""
    disk = tmpfs(rig.state, "4m")
    rig.preinstall(bundles[1], 1)
    agent = rig.start_agent()
    status_file = disk.path / "status.json"
    _until("status.json", status_file.exists)
    subprocess.run(["chattr", "+i", str(status_file)], check=True, timeout=30)
    try:
        rig.hub_wait(
            "the hub to hear status.json cannot be written",
            lambda: _hub_storage(rig).get("reasons") == ["permission"],
        )
        assert "status.json" in _hub_storage(rig)["error"]
        rig.hub_wait(
            "telemetry that says so, kept all the same",
            lambda: any(
                r.body.get("storage", {}).get("ok") is False
                for r in rig.hub.store.records("telemetry", DEVICE)
            ),
        )
        _alive(rig, agent)
    finally:
        subprocess.run(["chattr", "-i", str(status_file)], check=True, timeout=30)
    rig.hub_wait("the status to say it is over", lambda: _hub_storage(rig).get("ok") is True)
    assert _hub_storage(rig)["unkept"] == {}  # nothing was lost: only the file was refused
    code, _ = rig.stop_agent(agent)
    assert code == 0, rig.logs()
    every_record_once(rig, boots=(1,))
    assert _log_count(rig, FAULT_LINE) == 1 and _log_count(rig, BACK_LINE) == 1, rig.logs()


def test_a_full_disk_at_start_keeps_nothing_until_the_boot_is_saved(
    tmp_path: Path, tmpfs: Mount
) -> None:
    """The agent alone, never started (no broker needed): boot 1 keeps a record; the disk is
    full when the next agent comes up, so boot 2 cannot be saved and nothing is kept (neither
    under boot 2, which a restart would use again, nor under boot 1, which the hub has seen);
    once space returns the next record saves boot 2 and is kept under it, without a restart."""
    state = tmp_path / "dev" / "state"
    disk = tmpfs(state, "4m")
    init_hub(tmp_path / "hub")
    enroll_device(tmp_path / "hub", DEVICE, state)
    config = tmp_path / "dev" / "agent.toml"
    config.write_text('[device]\nid = "pi-01"\nstate_dir = "state"\n[broker]\nport = 1\n')

    def kept() -> list[tuple[int, int]]:
        return sorted(held(state / "buffer"))

    first = Agent(load_config(config))
    first.keep("telemetry", {"n": 0})
    first.buffer.close()
    assert (last_boot(state), kept()) == (1, [(1, 0)])

    disk.fill()
    agent = Agent(load_config(config))
    agent.health.retry_s = 0.0  # every record tries again: no waiting in a test
    for i in range(5):
        agent.keep("telemetry", {"n": i})
    assert agent.boot == 2 and last_boot(state) == 1 and not agent.buffer.opened
    storage = agent.status().stats["storage"]
    assert storage["ok"] is False and storage["reasons"] == ["disk-full"]
    assert storage["unkept"] == {"telemetry": 5}

    disk.free()
    agent.keep("telemetry", {"n": "after"})
    assert last_boot(state) == 2 and agent.buffer.opened
    assert kept() == [(1, 0), (2, 0)]  # the five of the full disk nowhere, "after" as (2, 0)
    storage = agent.status().stats["storage"]
    assert storage["ok"] is True and storage["unkept"] == {"telemetry": 5}
    agent.buffer.close()


def test_the_agent_commits_records_in_groups_when_its_config_asks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[buffer] group_rows reaches the agent's buffer: its files are fsynced once a group is
    full (or its window passes), not once a record. os.fsync is watched, each call still made."""
    state = tmp_path / "dev" / "state"
    init_hub(tmp_path / "hub")
    enroll_device(tmp_path / "hub", DEVICE, state)
    config = tmp_path / "dev" / "agent.toml"
    config.write_text(
        '[device]\nid = "pi-01"\nstate_dir = "state"\n[broker]\nport = 1\n'
        "[buffer]\ngroup_rows = 4\ngroup_window_s = 600\n"  # no window passes in this test
    )

    synced: list[int] = []
    real = os.fsync

    def watched(fd: int) -> None:
        real(fd)
        synced.append(fd)

    agent = Agent(load_config(config))
    assert agent.buffer.group_rows == 4
    agent.keep("telemetry", {"n": 0})  # the boot saved (fsynced) and the buffer opened
    monkeypatch.setattr(os, "fsync", watched)
    for i in range(1, 10):
        agent.keep("telemetry", {"n": i})
    assert len(synced) == 2 * 2  # two full groups, each the segment and the gone log
    assert len(held(state / "buffer")) == 10  # each kept when its append returned
    agent.buffer.close()
