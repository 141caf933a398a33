"""`edgehub store status` and `edgehub store upgrade`, on SQLite and on PostgreSQL; and workers
that open one un-migrated PostgreSQL database at the same moment take turns migrating it."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from cloud_hub.cli import app as hub_cli
from cloud_hub.harness.commands import edgehub_argv
from cloud_hub.store import migrations
from cloud_hub.store.database import Store, metadata
from cloud_hub.store.url import STORE_ENV, store_url
from edge_agent.protocol.messages import Batch, Record
from tests.support.cli import hub_fails
from tests.support.postgres import fresh_database
from tests.support.processes import launch, processes  # noqa: F401 (a fixture)

TABLES = sorted(t.name for t in metadata.sorted_tables)


def _hub(tmp_path: Path) -> Path:
    home = tmp_path / "hub"
    assert hub_cli.main(["--home", str(home), "keys", "init"]) == 0
    return home


def _status(home: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    capsys.readouterr()
    assert hub_cli.main(["--home", str(home), "store", "status", "--json"]) == 0
    info: dict[str, object] = json.loads(capsys.readouterr().out)
    return info


@pytest.mark.usefixtures("each_store")
def test_status_shows_engine_revision_and_rows_per_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], each_store: str
) -> None:
    home = _hub(tmp_path)
    url = store_url(home)
    if each_store == "postgresql":  # a password in the URL (trust auth ignores it) is hidden
        url = make_url(url).set(password="s3cret").render_as_string(hide_password=False)
        os.environ[STORE_ENV] = url  # each_store's monkeypatch puts it back
    store = Store(url)
    store.register("pi-01")
    records = tuple(Record(1, i, time.time(), {"count": 1}) for i in range(7))
    store.add_batch("telemetry", Batch("pi-01", records))
    store.engine.dispose()

    info = _status(home, capsys)
    assert info["engine"] == each_store
    assert info["revision"] == info["head"] == migrations.head() and info["up_to_date"]
    rows = info["rows"]
    assert isinstance(rows, dict) and sorted(rows) == TABLES
    assert rows["records"] == 7 and rows["devices"] == 1 and rows["rollouts"] == 0
    assert "s3cret" not in str(info["url"])

    assert hub_cli.main(["--home", str(home), "store", "status"]) == 0  # the table
    out = capsys.readouterr().out
    assert f"store: {each_store} at " in out and "s3cret" not in out
    assert f"schema: {migrations.head()}, newest {migrations.head()}\n" in out
    assert all(name in out for name in TABLES)
    if each_store == "postgresql":
        assert ":***@" in out


@pytest.mark.usefixtures("each_store")
def test_upgrade_takes_a_store_from_before_migrations_to_the_newest_revision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "hub"
    home.mkdir()
    engine = create_engine(store_url(home))
    metadata.create_all(engine)  # what a hub from before migrations made
    engine.dispose()

    info = _status(home, capsys)  # status changes nothing
    assert info["revision"] == "before migrations" and not info["up_to_date"]
    assert hub_cli.main(["--home", str(home), "store", "status"]) == 0
    assert "run `edgehub store upgrade`" in capsys.readouterr().out

    assert hub_cli.main(["--home", str(home), "store", "upgrade"]) == 0
    head = migrations.head()
    assert capsys.readouterr().out == f"store: schema upgraded from 0001 to {head}\n"
    assert _status(home, capsys)["up_to_date"]
    assert hub_cli.main(["--home", str(home), "store", "upgrade", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"from": head, "to": head, "changed": False}


@pytest.mark.usefixtures("each_store")
def test_a_database_a_newer_edgefleet_migrated_is_refused_in_one_line_and_left_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An older hub (a downgrade, or a worker not yet upgraded beside one that was) opening a
    database at a revision it does not know: status says so, upgrade and every other command
    refuse it in one line, and nothing is changed."""
    home = _hub(tmp_path)
    Store(store_url(home)).engine.dispose()  # migrated to this edgefleet's newest
    engine = create_engine(store_url(home))
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    info = _status(home, capsys)
    assert info["revision"] == "0999" and info["newer"] and not info["up_to_date"]
    assert hub_cli.main(["--home", str(home), "store", "status"]) == 0
    out = capsys.readouterr().out
    assert "a newer edgefleet migrated it: upgrade edgefleet" in out and "run `edgehub" not in out
    for argv in (("store", "upgrade"), ("devices", "list")):
        err = hub_fails(capsys, "--home", str(home), *argv)
        assert "a newer edgefleet migrated this database: upgrade edgefleet to use it" in err
        assert f"its schema revision is 0999; this edgefleet knows up to {migrations.head()}" in err
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0999"
    engine.dispose()


def test_store_commands_refuse_a_missing_hub_and_a_bad_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(STORE_ENV, raising=False)
    for sub in ("status", "upgrade"):
        err = hub_fails(capsys, "--home", str(tmp_path / "none"), "store", sub)
        assert "expected a hub folder (edgehub keys init), found none" in err
    home = _hub(tmp_path)
    bad = "postgresql+psycopg://hub:s3cret@127.0.0.1:1/edgehub"  # nothing listens on port 1
    err = hub_fails(capsys, "--home", str(home), "--store", bad, "store", "status")
    assert "cannot open or reach the database" in err and "s3cret" not in err
    err = hub_fails(capsys, "--home", str(home), "--store", "nosuch://x", "store", "upgrade")
    assert "hub store nosuch://x" in err


@pytest.mark.broker  # starts processes
def test_two_workers_opening_a_new_database_at_once_take_turns(
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both wait on the upgrade lock the test holds, then go at the same moment: one migrates,
    the other finds it done (without the lock both would create the tables and one fail)."""
    home = _hub(tmp_path)
    with fresh_database() as url:
        monkeypatch.setenv(STORE_ENV, url)
        empty = _status(home, capsys)  # an empty database, as status sees it: nothing made
        assert empty["revision"] is None and not empty["up_to_date"]
        assert empty["rows"] == {name: None for name in TABLES}
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as held:
            held.execute(text("SELECT pg_advisory_lock(:k)"), {"k": migrations.UPGRADE_LOCK_KEY})
            env = {STORE_ENV: url}
            workers = [
                launch(processes, *edgehub_argv(home, "store", "upgrade", "--json"), env=env)
                for _ in range(2)
            ]
            waiting = text(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()"
            )
            deadline = time.monotonic() + 60
            while held.execute(waiting).scalar_one() < 2:  # both at the lock
                assert time.monotonic() < deadline, "the workers never asked for the lock"
                assert all(w.poll() is None for w in workers), [w.communicate() for w in workers]
                held.execute(text("SELECT pg_sleep(0.05)"))
            held.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": migrations.UPGRADE_LOCK_KEY})
        engine.dispose()
        outcomes = []
        for worker in workers:
            out, err = worker.communicate(timeout=60)
            assert worker.returncode == 0, err
            outcomes.append(json.loads(out))
        head = migrations.head()
        assert sorted(o["from"] or "" for o in outcomes) == ["", head], outcomes
        assert all(o["to"] == head for o in outcomes)
        store = Store(url)
        assert store.revision == head
        store.engine.dispose()


@pytest.mark.usefixtures("each_store")
def test_retention_removes_sent_commands_and_keeps_unsent_ones(tmp_path: Path) -> None:
    store = Store(store_url(tmp_path))
    for device in ("pi-1", "pi-2", "pi-3"):
        store.queue_command(device, {"kind": "deploy", "device": device})
    first, second, _third = store.unsent_commands()
    store.mark_sent([first[0], second[0]])
    outbox_rows = text("select count(*) from outbox")
    store.prune(time.time() - 3600)  # sent within the hour: kept
    with store.engine.connect() as c:
        assert c.execute(outbox_rows).scalar_one() == 3
    assert store.prune(time.time() + 1) == 0  # no records; the two sent commands go
    assert [d for _, d, _ in store.unsent_commands()] == ["pi-3"]  # the unsent one stays
    with store.engine.connect() as c:
        assert c.execute(outbox_rows).scalar_one() == 1
    store.engine.dispose()


@pytest.mark.usefixtures("each_store")
def test_records_stored_so_far_never_go_down_when_retention_removes_some(tmp_path: Path) -> None:
    """/metrics serves them as a counter (`edgefleet_records_stored_total`, whose rate() is the
    ingest rate): a count that dropped each time retention pruned would read as a counter reset
    and chart as a spike of everything stored."""
    store = Store(store_url(tmp_path))
    try:
        for seqs, kind in ((range(5), "telemetry"), (range(5, 7), "events")):
            records = tuple(Record(1, i, time.time(), {"count": 1}) for i in seqs)
            store.add_batch(kind, Batch("pi-01", records))
        assert store.record_counts() == {"telemetry": 5, "events": 2}
        assert store.prune(time.time() + 1) == 7  # all of them are older than the cutoff
        assert store.count("telemetry", "pi-01") == 0
        assert store.record_counts() == {"telemetry": 5, "events": 2}
        store.add_batch("telemetry", Batch("pi-01", (Record(2, 0, time.time(), {"count": 1}),)))
        assert store.prune(time.time() - 3600) == 0
        assert store.record_counts() == {"telemetry": 6, "events": 2}
        store.prune(time.time() + 1)
        assert store.record_counts() == {"telemetry": 6, "events": 2}
    finally:
        store.engine.dispose()
