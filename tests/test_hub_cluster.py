"""Two `edgehub serve` workers on one PostgreSQL: both ingest (a shared subscription), one leads
(an advisory lock). SIGKILL the leader: the other leads within seconds, and every record the
device sent before, during and after is stored exactly once, counted in the database; a staged
rollout the dead leader was in the middle of goes on from its stored step, every device getting
its deploy once."""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, Engine, create_engine, make_url, select, text
from sqlalchemy.exc import SQLAlchemyError

from cloud_hub.broker.local import RunningBroker, free_port
from cloud_hub.cli.app import main
from cloud_hub.cluster import MIN_LEADER_TIMEOUT_S, leader
from cloud_hub.cluster.leader import (
    BUMP_WAIT_S,
    EPOCH_KEY,
    LOCK_KEY,
    AdvisoryLock,
    FileLock,
    LostLead,
)
from cloud_hub.harness.commands import serve_argv
from cloud_hub.harness.simulate import SIM_MODEL, SimOptions, Simulation, build_sim_model
from cloud_hub.hub import TUF_STATE, Hub
from cloud_hub.rollout import engine as ro
from cloud_hub.rollout.gates import Gates
from cloud_hub.rollout.operations import init_hub, start_rollout
from cloud_hub.signing.tuf_repo import TufRepository
from cloud_hub.store.database import Store, outbox
from cloud_hub.store.errors import StoreError
from cloud_hub.store.url import STORE_ENV
from edge_agent.mqtt.session import BrokerAddress
from tests.support.device_rig import Device
from tests.support.hub_thread import new_hub, run_hub
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


def _two_workers(
    home: Path, broker: RunningBroker, started: list[subprocess.Popen[str]], *options: str
) -> tuple[list[subprocess.Popen[str]], list[Lines], int]:
    """Two `edgehub serve` workers on `home` and the store in EDGEHUB_STORE; which leads."""
    workers, logs = [], []
    for name in ("a", "b"):
        argv = serve_argv(home, "127.0.0.1", broker.port, "--http", "off", "-v", *options)
        proc = launch(started, *argv, "--share", "hubs", "--client-id", f"edgehub-{name}")
        workers.append(proc)
        logs.append(Lines(proc.stderr))  # type: ignore[arg-type]
        Lines(proc.stdout).expect("serving")  # type: ignore[arg-type]
    verdicts = [said.expect("this worker") for said in logs]  # each worker's first tick
    assert sorted(LEADS in v for v in verdicts) == [False, True], verdicts
    return workers, logs, 0 if LEADS in verdicts[0] else 1


def test_the_leader_dies_the_other_leads_and_no_record_is_lost(
    pg: str,
    broker: RunningBroker,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    home = tmp_path / "hub"
    assert main(["--home", str(home), "keys", "init"]) == 0
    workers, logs, leader = _two_workers(home, broker, processes)

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
        _drained(device)
        resends = device.sender.resends
        device.record(K)  # the dead worker's share of the group is the survivor's now
        _drained(device)
    finally:
        device.close()
    assert handover < HANDOVER_S, f"the lead moved after {handover:.1f} s"
    assert _stored(pg) == list(range(3 * K)), "missing or repeated records"
    # none of them waited for a confirmation that could not come (the broker handing the dead
    # worker's session its share, to queue until it came back) and went out again
    assert device.sender.resends == resends, "records went to the dead worker's session"


ROLLOUT_S = 120.0  # the whole staged rollout, handover included


def _until(
    what: str, ready: Callable[[], Any], timeout: float = ROLLOUT_S, seen: object = None
) -> Any:
    """Wait for `ready()` to return something true (a state another process writes to the
    database: read again every 20 ms); that value. `seen` goes with the failure."""
    deadline, tick = time.monotonic() + timeout, threading.Event()
    while True:
        value = ready()
        if value:
            return value
        assert time.monotonic() < deadline, f"no {what} in {timeout:.0f} s: {seen}"
        tick.wait(0.02)


def test_the_leader_dies_mid_rollout_and_the_other_carries_it_on_from_its_stored_step(
    pg: str,
    broker: RunningBroker,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    home = tmp_path / "hub"
    init_hub(home)
    build_sim_model(home, tmp_path, SIM_MODEL)
    workers, logs, leader = _two_workers(home, broker, processes)
    opts = SimOptions(devices=4, rate=40.0, window_s=0.25, status_s=1.0, prefix="c")
    sim = Simulation(home, tmp_path / "fleet", opts, (broker.host, broker.port), False)
    store = Store(pg)
    seen: list[tuple[int, int, str]] = []  # (rev, wave, state) of each read of the rollout
    last: list[ro.Rollout] = []

    def rollout() -> tuple[int, ro.Rollout]:
        row = store.rollout(rid)
        assert row is not None
        r = ro.Rollout.from_json(row["body"])
        seen.append((row["rev"], r.wave, r.state))
        last[:] = [r]
        return row["rev"], r

    try:
        assert sim.wait_connected(30)
        _until("device online", lambda: all(d["online"] for d in store.devices()))
        # canary 1, then 2 of 4, then all: three waves, each soaking 2 s after it installed
        gates = Gates(soak_s=2.0)
        rid = start_rollout(home, SIM_MODEL, "1", waves="50%,100%", gates=gates).id

        def in_wave_two() -> tuple[int, ro.Rollout] | None:
            rev, r = rollout()
            return (rev, r) if r.wave == 1 and r.stages[1].started is not None else None

        rev_at_kill, at_kill = _until("second wave under way", in_wave_two, seen=last)
        workers[leader].kill()  # SIGKILL in the middle of the stage
        workers[leader].wait(30)
        killed_at = time.time()
        accepted = sim.fleet.devices
        sent_at_kill = sum(d.accepted() for d in accepted)
        # the devices go on recording while the lead moves: these are stored once too
        _until("record after the kill", lambda: sum(d.accepted() for d in accepted) > sent_at_kill)
        handover = _logged_at(logs[1 - leader].expect(LEADS)) - killed_at
        _, done = _until("end", lambda: (r := rollout())[1].state != ro.RUNNING and r, seen=last)
        result = sim.finish()
    finally:
        sim.close()
    assert handover < HANDOVER_S, f"the lead moved after {handover:.1f} s"
    assert done.state == ro.COMPLETED, done.halt_reason
    # carried on from the stored step: what was decided or started before the kill stands
    assert done.stages[0] == at_kill.stages[0] and done.stages[0].decided is not None
    assert done.stages[1].started == at_kill.stages[1].started
    assert all(s.started and s.settled and s.decided for s in done.stages), done.stages
    revs = [rev for rev, _, _ in seen]
    waves = [wave for _, wave, _ in sorted(set(seen))]
    assert waves == sorted(waves) and rev_at_kill in revs, seen  # never a wave back
    # every device got its deploy once: one queued command each, one install each
    assert set(done.devices.values()) == {ro.HEALTHY}, done.devices
    deploys = Counter(device for device, body in _outbox(store) if body["kind"] == "deploy")
    assert deploys == Counter({d: 1 for d in sim.fleet.ids}), deploys
    for d in sim.fleet.devices:
        events = [r.body["event"] for r in store.records("events", d.id)]
        assert events.count("installed") == 1, (d.id, events)
        assert d.agent.store.record().current == SIM_MODEL
    # the records the devices sent, before, during and after the kill, each stored once
    assert result["accepted"] > sent_at_kill  # records sent after the kill: stored once too
    assert result["exactly_once"], result
    store.engine.dispose()


def test_a_step_the_dead_leader_stored_but_never_sent_is_sent_by_the_next(
    pg: str,
    broker: RunningBroker,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    """The window a SIGKILL only sometimes hits, every time: a leader stores a rollout step and
    dies before its commands leave (here: its link to the broker is down, then it ends). The
    next leader sends them at once, rather than after the devices stay silent for
    RESEND_IDLE_S."""
    home = tmp_path / "hub"
    init_hub(home)
    build_sim_model(home, tmp_path, SIM_MODEL)
    argv = serve_argv(home, "127.0.0.1", broker.port, "--http", "off", "-v", "--share", "hubs")
    ingest = launch(processes, *argv, "--client-id", "edgehub-ingest", "--ingest-only")
    Lines(ingest.stdout).expect("serving")  # type: ignore[arg-type]
    opts = SimOptions(devices=2, rate=20.0, window_s=0.5, prefix="h")
    sim = Simulation(home, tmp_path / "fleet", opts, (broker.host, broker.port), False)
    store = Store(pg)
    try:
        assert sim.wait_connected(30)
        _until("device online", lambda: all(d["online"] for d in store.devices()))
        rid = start_rollout(home, SIM_MODEL, "100%").id  # one wave: both devices
        cut_off = Hub(home, BrokerAddress("127.0.0.1", free_port()), store_url=pg)
        assert cut_off.leadership.leads()  # the ingest-only worker never asks
        cut_off._step_rollouts()  # the leader's step, as its tick runs it
        stored = store.rollout(rid)
        assert stored is not None and set(stored["body"]["devices"].values()) == {ro.SENT}
        cut_off.leadership.close()  # it ends: its session, and the lead, with it
        cut_off.store.engine.dispose()

        leader = launch(processes, *argv, "--client-id", "edgehub-leader")
        Lines(leader.stderr).expect(LEADS)  # type: ignore[arg-type]

        def completed() -> bool:
            row = store.rollout(rid)
            return row is not None and row["state"] == ro.COMPLETED

        _until("completed rollout", completed, timeout=ro.RESEND_IDLE_S / 5)
        result = sim.finish()
    finally:
        sim.close()
    deploys = Counter(device for device, body in _outbox(store) if body["kind"] == "deploy")
    assert deploys == Counter({d: 1 for d in sim.fleet.ids}), deploys
    assert all(d.agent.store.record().current == SIM_MODEL for d in sim.fleet.devices)
    assert result["exactly_once"], result
    store.engine.dispose()


def _logged_at(line: str) -> float:
    """The epoch time of a hub's log line (its asctime: local time, to the millisecond)."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _outbox(store: Store) -> list[tuple[str, dict[str, Any]]]:
    """Every command queued (device, body); each must have been sent."""
    with store.engine.connect() as c:
        rows = c.execute(select(outbox.c.device, outbox.c.body, outbox.c.sent)).all()
    unsent = [r for r in rows if r.sent is None]
    assert not unsent, f"commands never sent: {unsent}"
    return [(r.device, r.body) for r in rows]


def test_one_advisory_lock_at_a_time_and_it_goes_with_its_session(pg: str) -> None:
    engine = Store(pg).engine  # the schema: each lead bumps the epoch in hub_state
    first, second = AdvisoryLock(engine), AdvisoryLock(engine)
    try:
        assert first.leads() and first.leads() and first.epoch == 1
        assert not second.leads() and second.epoch is None
        first.close()
        assert second.leads() and second.epoch == 2
        assert not first.leads() and first.epoch is None
    finally:
        first.close()
        second.close()
        engine.dispose()


@pytest.mark.parametrize("edited", ["two", 2.5, {"epoch": 2}, -1])
def test_an_epoch_that_is_no_lead_number_refuses_the_leader_and_the_next_lead_starts_over(
    pg: str, edited: object
) -> None:
    """The leader epoch edited by hand (or left by something else) to what no bump writes: a
    fenced transaction is refused as a lost lead (not a ValueError out of the tick), and the
    next worker to take the lock leads, from a number of its own."""
    store = Store(pg)
    lock = AdvisoryLock(store.engine)
    try:
        assert lock.leads() and lock.epoch == 1
        store.set_state(EPOCH_KEY, edited)
        with lock.fence(), pytest.raises(LostLead):
            store.get_state("step")
        lock.close()
        assert lock.leads() and lock.epoch == 1
        with lock.fence():
            store.set_state("step", "stored")
        assert store.get_state("step") == "stored"
        assert store.get_state(EPOCH_KEY) == 1
    finally:
        lock.close()
        store.engine.dispose()


def _take_over(lock: AdvisoryLock, engine: Engine) -> None:
    """What a worker that found the lock's holder hung does: end its session (the lock goes
    with it), then lead."""
    with _autocommit(engine) as c:
        c.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND granted AND database = (SELECT oid FROM pg_database "
                "WHERE datname = current_database())"
            )
        )
    _waited("lead", lock.leads, HANDOVER_S)


def test_a_lead_taken_meanwhile_refuses_what_the_old_leader_goes_on_to_store(pg: str) -> None:
    """The leader hung in the middle of a step, another worker ended its lock's session and
    leads; the woken one goes on with its step before it looks at its lock again. What that
    step stores is refused; what the worker ingests (not fenced) is not."""
    old_store = Store(pg)
    engine = create_engine(pg)
    old, new = AdvisoryLock(old_store.engine), AdvisoryLock(engine)
    try:
        assert old.leads() and old.epoch == 1
        with old.fence():
            old_store.set_state("step", "first")  # its lead: stored
        fence = old.fence()  # the step's fence, taken before it hung
        _take_over(new, engine)
        assert new.epoch == 2
        with fence, pytest.raises(LostLead, match="led as epoch 1, now it is 2"):
            old_store.set_state("step", "after the handover")
        with fence:
            assert not old.holds()  # its next look at its lock: the session is gone
        assert old.epoch is None
        old_store.set_state("ingest", "stored")  # outside a fence: every worker ingests
        with new.fence():
            new_store = Store(pg)
            assert new_store.get_state("step") == "first"
            new_store.set_state("step", "the new leader's")
        assert old_store.get_state("step") == "the new leader's"
        assert old_store.get_state("ingest") == "stored"
        new_store.engine.dispose()
    finally:
        old.close()
        new.close()
        engine.dispose()
        old_store.engine.dispose()


def test_the_next_lead_waits_for_a_transaction_the_old_one_began(pg: str) -> None:
    """The epoch is read FOR SHARE at the start of each fenced transaction: a new lead's bump
    waits until such a transaction ends, so what the old leader committed comes before
    anything the new one does, never in the middle of it."""
    old_store = Store(pg)
    engine = create_engine(pg)
    old, new = AdvisoryLock(old_store.engine), AdvisoryLock(engine)
    took: list[int | None] = []
    try:
        assert old.leads()
        with old.fence(), old_store.engine.begin() as step:  # the step's transaction, begun
            taker = threading.Thread(target=lambda: took.append(_take_over(new, engine)))
            taker.start()

            def bump_waits() -> bool:
                with engine.connect() as c:
                    return bool(
                        c.execute(
                            text(
                                "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                "current_database() AND wait_event_type = 'Lock' "
                                "AND query LIKE '%hub_state%'"
                            )
                        ).scalar()
                    )

            _waited("the new lead's bump waiting", bump_waits, HANDOVER_S)
            assert new.epoch is None
            step.execute(text("UPDATE hub_state SET value = CAST('7' AS json) WHERE key = 'x'"))
        taker.join(HANDOVER_S)
        assert took == [None] and new.epoch == 2
    finally:
        old.close()
        new.close()
        engine.dispose()
        old_store.engine.dispose()


def test_a_hung_leaders_open_transaction_does_not_hold_the_next_lead_forever(pg: str) -> None:
    """A leader stopped inside a step's transaction, its sessions named by the URL (not
    `edgehub:...`: the next worker ends its lock's session only). That transaction reads the
    epoch FOR SHARE, which the next lead's bump waits for: idle past the leader timeout, it is
    ended, and the next worker leads."""
    timeout = 2.0
    hung = Store(pg + "?application_name=edgehub")
    engine = create_engine(pg)
    old, new = AdvisoryLock(hung.engine, timeout_s=timeout), AdvisoryLock(engine, timeout_s=timeout)
    step = hung.engine.connect()
    try:
        assert old.leads() and old._beating is not None
        old._beating.set()  # the process stops: its heartbeat too
        with old.fence():
            step.begin()  # FOR SHARE on the epoch, held while it is stopped
        _waited("lead", new.leads, 3 * timeout + 2 * BUMP_WAIT_S)
        assert new.epoch == 2
        with pytest.raises(StoreError):
            step.execute(text("SELECT 1"))  # the stopped leader's transaction was ended
    finally:
        step.close()
        old.close()
        new.close()
        engine.dispose()
        hung.engine.dispose()


def test_a_lead_taken_while_a_live_transaction_reads_the_epoch_is_given_back(
    pg: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The lock is free but a transaction of the previous lead (not idle for long) still reads
    the epoch: the bump waits BUMP_WAIT_S at most, then the worker gives the lead back and says
    why, rather than hold its tick (and its ingest) for as long as that transaction lasts."""
    monkeypatch.setattr(leader, "BUMP_WAIT_S", 0.5)
    store = Store(pg)
    engine = create_engine(pg)
    old, new = AdvisoryLock(store.engine), AdvisoryLock(engine)
    try:
        assert old.leads()
        with old.fence(), store.engine.connect() as step:
            step.execute(text("SELECT 1"))  # a step's transaction: it read the epoch
            old.close()  # the lock goes (its session broke), the transaction stays
            with caplog.at_level(logging.WARNING, logger=leader.__name__):
                assert not new.leads()
            assert "still reads the leader epoch" in caplog.text
            other = AdvisoryLock(engine)
            assert other.leads() is False  # the bump waits again: the lock was given back
            other.close()
        assert new.leads() and new.epoch == 2  # the transaction ended: the next ask leads
    finally:
        old.close()
        new.close()
        engine.dispose()
        store.engine.dispose()


def test_a_worker_that_may_not_end_the_idle_reader_gives_the_lead_back(
    pg: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Workers under two database roles, the next one allowed to see the other's sessions but
    not to end them: the hung leader's idle transaction stays, and the next worker waits
    BUMP_WAIT_S, gives the lead back and says why, rather than fail every tick."""
    monkeypatch.setattr(leader, "BUMP_WAIT_S", 0.5)
    role = f"edgefleet_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg)
    store = Store(pg)  # the hung leader: the superuser, whose sessions the role may not end
    with _autocommit(admin) as c:
        c.execute(text(f"CREATE ROLE {role} LOGIN IN ROLE pg_read_all_stats"))
        c.execute(text(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}"))
    other = create_engine(make_url(pg).set(username=role))
    old, new = AdvisoryLock(store.engine, timeout_s=1), AdvisoryLock(other, timeout_s=1)
    step = store.engine.connect()
    try:
        assert old.leads()
        with old.fence():
            step.begin()  # reads the epoch FOR SHARE, then idles
        old.close()  # the lock goes, the transaction stays
        _waited("a second of idling", lambda: _idle_for(admin) > 1, HANDOVER_S)
        with caplog.at_level(logging.WARNING, logger=leader.__name__):
            assert not new.leads()
        assert "still reads the leader epoch" in caplog.text
        step.execute(text("SELECT 1"))  # still there: not ended
    finally:
        step.close()
        old.close()
        new.close()
        other.dispose()
        store.engine.dispose()
        with _autocommit(admin) as c:
            c.execute(text(f"DROP OWNED BY {role}"))
            c.execute(text(f"DROP ROLE {role}"))
        admin.dispose()


def test_the_lock_session_is_not_handed_back_to_the_stores_pool(pg: str) -> None:
    """The lock's session carries a lock_timeout of its own, and may still hold the lock when
    a statement on it fails: given up (close, or an error that is no broken connection), it is
    closed, not put back in the engine's pool for ingest or a step to run on."""
    store = Store(pg)
    lock = AdvisoryLock(store.engine)
    try:
        assert lock.leads()
        lock.close()
        with store.engine.connect() as c:
            assert c.execute(text("SHOW lock_timeout")).scalar() == "0"
    finally:
        lock.close()
        store.engine.dispose()


def test_a_bump_that_fails_otherwise_leaves_no_lock_behind(pg: str) -> None:
    """The bump refused for another reason than the lock timeout (here a statement_timeout
    shorter than BUMP_WAIT_S, as a role may have it) while a transaction of the old lead
    reads the epoch: the lead is not this worker's, and neither is the lock, nor does an idle
    session of its pool keep it from the next worker to ask."""
    store = Store(pg)
    timed = Store(pg + "?options=-c%20statement_timeout%3D300")
    old, new = AdvisoryLock(store.engine), AdvisoryLock(timed.engine)
    step = store.engine.connect()
    try:
        assert old.leads()
        with old.fence():
            step.begin()  # reads the epoch FOR SHARE
        old.close()
        assert not new.leads()
        step.close()

        # its session's end, on the server's time
        _waited("the lock released", lambda: _advisory_locks(store.engine) == 0, HANDOVER_S)
    finally:
        step.close()
        old.close()
        new.close()
        timed.engine.dispose()
        store.engine.dispose()


def test_the_bump_s_lock_timeout_is_known_by_its_sqlstate_not_its_words(
    pg: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A server whose lc_messages is not English words the lock timeout otherwise (here a
    trigger raises lock_not_available, 55P03, as a German server says it): the lead is given
    back, said as such, not taken for a broken session."""
    store = Store(pg)
    lock = AdvisoryLock(store.engine)
    with _autocommit(store.engine) as c:
        c.execute(
            text(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION 'storniere Anfrage wegen Zeitüberschreitung einer Sperre' "
                "USING ERRCODE = 'lock_not_available'; END $$"
            )
        )
        c.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT ON hub_state "
                "FOR EACH ROW EXECUTE FUNCTION refuse()"
            )
        )
    try:
        with caplog.at_level(logging.WARNING, logger=leader.__name__):
            assert not lock.leads()
        assert "still reads the leader epoch" in caplog.text
        assert "lost the lead" not in caplog.text
    finally:
        lock.close()
        store.engine.dispose()


def test_the_next_lead_leaves_a_transaction_that_only_read_hub_state_alone(pg: str) -> None:
    """A session idle in a transaction that read hub_state without FOR SHARE (an operator's
    psql, say) does not hold the bump back: the next lead does not end it."""
    store = Store(pg)
    old, new = AdvisoryLock(store.engine, timeout_s=1), AdvisoryLock(store.engine, timeout_s=1)
    reader = store.engine.connect()
    try:
        reader.execute(text("SELECT * FROM hub_state"))  # its transaction stays open
        _waited("a second of idling", lambda: _idle_for(store.engine) > 1, HANDOVER_S)
        assert new.leads()
        reader.execute(text("SELECT 1"))  # still there
    finally:
        reader.close()
        old.close()
        new.close()
        store.engine.dispose()


def test_a_reader_this_role_may_not_end_does_not_keep_it_from_ending_the_hung_one(
    pg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hung leader and the next worker run as one role; a superuser's session (an
    operator's edit by hand) is idle in a transaction that wrote hub_state. The role may not
    end that one: the hung leader's idle transaction is ended all the same, and the next
    worker leads."""
    monkeypatch.setattr(leader, "BUMP_WAIT_S", 0.5)
    role = f"edgefleet_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg)
    Store(pg).engine.dispose()  # the schema
    with _autocommit(admin) as c:
        c.execute(text(f"CREATE ROLE {role} LOGIN IN ROLE pg_read_all_stats"))
        c.execute(text(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}"))
    engine = create_engine(make_url(pg).set(username=role))
    old, new = AdvisoryLock(engine, timeout_s=1), AdvisoryLock(engine, timeout_s=1)
    operator, step = admin.connect(), engine.connect()
    try:
        assert old.leads()
        with old.fence():
            step.begin()  # reads the epoch FOR SHARE, then idles: the hung leader's
        old.close()  # its lock's session was ended
        operator.execute(
            text("INSERT INTO hub_state (key, value) VALUES ('note', CAST('1' AS json))")
        )
        _waited("a second of idling", lambda: _idle_for(admin) > 1, HANDOVER_S)
        assert new.leads() and new.epoch == 2
        with pytest.raises(SQLAlchemyError):
            step.execute(text("SELECT 1"))  # the hung leader's transaction was ended
        operator.execute(text("SELECT 1"))  # not this role's to end: still there
    finally:
        with contextlib.suppress(SQLAlchemyError):  # ended: its rollback may fail
            step.close()
        operator.close()
        old.close()
        new.close()
        engine.dispose()
        with _autocommit(admin) as c:
            c.execute(text(f"DROP OWNED BY {role}"))
            c.execute(text(f"DROP ROLE {role}"))
        admin.dispose()


def test_a_hung_leader_stopped_while_the_server_sends_it_a_result_is_ended(
    pg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leader stopped while its fenced transaction's result is on the way: the server waits
    to write it (active, ClientWrite), not idle, for as long as the process stays stopped. It
    is ended as an idle one is, past the leader timeout, and the next worker leads."""
    monkeypatch.setattr(leader, "BUMP_WAIT_S", 0.5)
    store = Store(pg)
    new = AdvisoryLock(store.engine, timeout_s=1)
    hung = psycopg.connect(make_url(pg).set(drivername="postgresql").render_as_string(False))
    try:
        assert new.leads() and new.epoch == 1
        new.close()  # the first lead: the epoch is there to read
        hung.execute("SELECT value FROM hub_state WHERE key = 'leader_epoch' FOR SHARE")
        hung.pgconn.send_query(b"SELECT repeat('x', 1000) FROM generate_series(1, 100000)")
        _waited("lead", new.leads, HANDOVER_S)
        assert new.epoch == 2
    finally:
        hung.close()
        new.close()
        store.engine.dispose()


def _idle_for(engine: Engine) -> float:
    """The longest any session of this database has been idle in a transaction, in seconds."""
    with engine.connect() as c:
        return float(
            c.execute(
                text(
                    "SELECT coalesce(max(EXTRACT(EPOCH FROM now() - state_change)), 0) "
                    "FROM pg_stat_activity WHERE datname = current_database() "
                    "AND state = 'idle in transaction'"
                )
            ).scalar()
        )


def test_a_leader_whose_lead_is_taken_mid_step_says_so_and_follows(
    pg: str, broker: RunningBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hub = new_hub(tmp_path / "hub", broker, share="hubs", client_id="edgehub-a")  # no keys
    engine = create_engine(pg)
    other = AdvisoryLock(engine)

    def hangs_then_stores(now: float) -> None:  # a step the worker hung in
        _take_over(other, engine)
        hub.store.set_state("quality", "stale")

    try:
        hub.quality.tick = hangs_then_stores  # type: ignore[method-assign]
        with caplog.at_level(logging.WARNING, logger="cloud_hub.hub"):
            hub.tick()
        said = [r.getMessage() for r in caplog.records]
        assert any("lost the lead" in m and "led as epoch 1, now it is 2" in m for m in said)
        assert hub.store.get_state("quality") is None
        hub.tick()
        assert hub.leading is False and other.holds()
    finally:
        other.close()
        engine.dispose()
        hub.store.engine.dispose()


def _waited(what: str, ready: Callable[[], bool], timeout: float) -> float:
    """Seconds until `ready()` (asked every 50 ms) held; fails after `timeout`."""
    started, tick = time.monotonic(), threading.Event()
    while not ready():
        assert time.monotonic() - started < timeout, f"no {what} in {timeout:.0f} s"
        tick.wait(0.05)
    return time.monotonic() - started


def _autocommit(engine: Engine) -> Connection:
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def test_a_lock_session_quiet_past_the_timeout_is_ended_and_the_asker_leads(pg: str) -> None:
    """A holder that says nothing (a leader that stopped: its socket open, its heartbeat
    silent) loses the lock to a worker that asks after the timeout, with the other sessions of
    its process (one in a transaction); one that speaks keeps it; the same lock in another
    database is another fleet's, and is left alone."""
    timeout = 2.0
    Store(pg).engine.dispose()  # the schema: a lead bumps the epoch in hub_state
    engine = create_engine(pg)
    # the hung worker's sessions carry its name, as every hub's do (SESSION_NAME)
    hung_worker = create_engine(pg, connect_args={"application_name": "edgehub:gone:42"})
    asker = AdvisoryLock(engine, timeout_s=timeout)
    with fresh_database() as elsewhere_url:
        elsewhere = create_engine(elsewhere_url)
        try:
            with _autocommit(elsewhere) as other_fleet:
                other_fleet.execute(text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
                with _autocommit(engine) as talking:
                    talking.execute(text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
                    deadline, tick = time.monotonic() + 2 * timeout, threading.Event()
                    while time.monotonic() < deadline:
                        talking.execute(text("SELECT 1"))  # a live leader's heartbeat
                        assert not asker.leads()
                        tick.wait(0.1)
                    talking.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
                with _autocommit(hung_worker) as hung, hung_worker.connect() as in_transaction:
                    in_transaction.execute(text("SELECT 1"))  # a transaction left open
                    hung.execute(text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
                    took = _waited("lead", asker.leads, 4 * timeout)
                    assert took >= timeout * 0.9  # not before the timeout (the server's clock)
                    for session in (hung, in_transaction):  # woken: its sessions are gone
                        with pytest.raises(SQLAlchemyError):
                            session.execute(text("SELECT 1"))
                assert asker.holds()
                other_fleet.execute(text("SELECT 1"))  # quiet all along, and still there
        finally:
            asker.close()
            for e in (engine, hung_worker, elsewhere):
                e.dispose()


def test_a_hung_leader_is_ended_the_other_leads_and_the_woken_one_follows(
    pg: str,
    broker: RunningBroker,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    home = tmp_path / "hub"
    assert main(["--home", str(home), "keys", "init"]) == 0
    timeout = f"{MIN_LEADER_TIMEOUT_S:g}"
    workers, logs, leader = _two_workers(home, broker, processes, "--leader-timeout", timeout)
    workers[leader].send_signal(signal.SIGSTOP)  # hangs: its sockets stay open
    stopped_at = time.monotonic()
    logs[1 - leader].expect("silent for", f"past the leader timeout of {timeout} s")
    logs[1 - leader].expect(LEADS)
    handover = time.monotonic() - stopped_at
    workers[leader].send_signal(signal.SIGCONT)
    logs[leader].expect("lost the lead")
    logs[leader].expect("this worker follows")
    assert float(timeout) <= handover < float(timeout) + HANDOVER_S
    engine = create_engine(pg)
    try:
        assert _advisory_locks(engine) == 1  # one holder of the lock
    finally:
        engine.dispose()


def _advisory_locks(engine: Engine) -> int:
    """Advisory locks held in this database (tests beside it, in theirs, hold their own)."""
    with engine.connect() as c:
        held = c.execute(
            text(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE l.locktype = 'advisory' AND d.datname = current_database()"
            )
        )
        return int(held.scalar_one())


def test_workers_sharing_a_home_on_sqlite_take_turns(tmp_path: Path) -> None:
    first, second = FileLock(tmp_path), FileLock(tmp_path)
    assert first.leads() and not second.leads()
    first.close()
    assert second.leads() and not first.leads()
    second.close()


def test_a_worker_whose_repository_is_behind_the_leaders_never_leads(
    pg: str, broker: RunningBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Workers each on a copy of the hub folder made once: the leader signs on in its own, and
    a worker whose copy is older must not take the lead when it dies. Its metadata would be
    older than what devices hold (they refuse it as a rollback) and it would not have the
    bundles the fleet runs. It says why and leaves the lock to a worker that can lead."""
    a_home, b_home = tmp_path / "a", tmp_path / "b"
    init_hub(a_home)
    shutil.copytree(a_home, b_home)
    assert TufRepository(a_home).refresh_timestamp(timedelta(days=36500))  # signed on, in a only
    a = new_hub(a_home, broker, share="hubs", client_id="edgehub-a")
    halt = run_hub(a)
    try:
        state = _until("published metadata", lambda: a.store.get_state(TUF_STATE), HANDOVER_S)
        assert state == {"timestamp_version": 2} and a.leading
    finally:
        halt()  # gives the lock up
    b = new_hub(b_home, broker, share="hubs", client_id="edgehub-b")
    other = AdvisoryLock(b.store.engine)
    try:
        with caplog.at_level(logging.ERROR, logger="cloud_hub.hub"):
            b.tick()
            b.tick()
        assert b.leading is False
        said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(said) == 1, said  # once, not every tick
        assert "neither leads nor serves what it lacks" in said[0]
        assert "timestamp version 1, and the cluster's leader published 2" in said[0]
        assert other.leads()  # b left the lock free for a worker that can lead
        other.close()
        shutil.copytree(a_home / "tuf", b_home / "tuf", dirs_exist_ok=True)  # its folder caught up
        assert b._behind() is None and b.leadership.leads()
        for wrong in ("x", {"timestamp_version": "9"}, [9]):  # not what a leader writes
            b.store.set_state(TUF_STATE, wrong)
            b.tick()  # goes on: the state is not taken for a version
            assert b._behind() is None
    finally:
        other.close()
        b.leadership.close()
        b.store.engine.dispose()
