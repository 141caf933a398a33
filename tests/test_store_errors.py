"""The store's own error family: a database failure is a StoreError with a reason, and the CLI
prints it as one line, never SQLAlchemy's traceback."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cloud_hub.cli import app as hub_cli
from cloud_hub.store.database import Store
from cloud_hub.store.errors import StoreError, reason_of, safe_url
from cloud_hub.store.url import store_url
from edge_agent.errors import TransportError


@pytest.mark.parametrize(
    ("said", "reason"),
    [
        ("database is locked", "locked"),
        ("(sqlite3.OperationalError) database or disk is full", "disk-full"),
        ("attempt to write a readonly database", "read-only"),
        ("file is not a database", "corrupt"),
        ("no such table: records", "schema"),
        ('connection to server at "db" failed: Connection refused', "unavailable"),
        ("something new", "failed"),
    ],
)
def test_a_drivers_message_gets_a_reason(said: str, reason: str) -> None:
    assert reason_of(said) == reason


def test_the_password_is_never_printed() -> None:
    assert "s3cret" not in safe_url("postgresql://hub:s3cret@db:5432/hub")


def test_a_damaged_database_file_is_one_line_at_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "hub"
    assert hub_cli.main(["--home", str(home), "keys", "init"]) == 0
    capsys.readouterr()
    for wal in home.glob("hub.sqlite*"):
        wal.unlink()
    (home / "hub.sqlite").write_bytes(b"this is not a database, just bytes " * 200)
    code = hub_cli.main(["--home", str(home), "devices", "list"])
    _, err = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert "the database file is damaged" in err and "hub.sqlite" in err


def test_a_write_the_database_refuses_is_a_store_error(tmp_path: Path) -> None:
    store = Store(store_url(tmp_path))
    store.register("pi-1")
    db = sqlite3.connect(tmp_path / "hub.sqlite")
    db.execute("DROP TABLE devices")  # the database loses a table under the hub
    db.commit()
    db.close()
    with pytest.raises(StoreError) as err:
        store.register("pi-2")
    assert err.value.reason == "schema"
    assert isinstance(err.value, TransportError)  # the hub retries: the device resends
