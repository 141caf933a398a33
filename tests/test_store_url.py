"""`edgehub --store URL` and EDGEHUB_STORE reach the hub's database for every command; a URL
that cannot be used is one line naming it, its password masked."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cloud_hub.cli.app import main
from cloud_hub.store.database import Store
from cloud_hub.store.url import STORE_ENV, store_url
from tests.support.postgres import fresh_database


def test_the_flag_and_the_variable_reach_postgresql(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(STORE_ENV, raising=False)
    home = tmp_path / "hub"
    assert main(["--home", str(home), "keys", "init"]) == 0
    with fresh_database() as url:
        Store(url).register("pi-pg")
        Store(store_url(home)).register("pi-sqlite")
        capsys.readouterr()
        assert main(["--home", str(home), "--store", url, "devices", "list", "--json"]) == 0
        shown = capsys.readouterr().out
        assert "pi-pg" in shown and "pi-sqlite" not in shown
        monkeypatch.delenv(STORE_ENV, raising=False)  # --store set it for that command
        monkeypatch.setenv(STORE_ENV, url)
        assert main(["--home", str(home), "devices", "list", "--json"]) == 0
        assert "pi-pg" in capsys.readouterr().out
        # the flag wins over the variable
        sqlite = f"sqlite:///{home / 'hub.sqlite'}"
        assert main(["--home", str(home), "--store", sqlite, "devices", "list", "--json"]) == 0
        shown = capsys.readouterr().out
        assert "pi-sqlite" in shown and "pi-pg" not in shown


MISSING_DRIVER = "postgresql://edge:s3cret@127.0.0.1/hub"  # psycopg hidden: no `postgres` extra


@pytest.mark.parametrize(
    ("url", "needles"),
    [
        ("postgresql+psycopg://edge:s3cret@127.0.0.1:1/hub", ["cannot open or reach", "***"]),
        (MISSING_DRIVER, ["driver is not installed", "pip install 'edgefleet[postgres]'"]),
        ("mysql+nosuchdriver://u@h/db", ["stores in sqlite or postgresql, got mysql"]),
        ("mysql://u:s3cret@h/db", ["expected a database URL such as", "got mysql"]),
        ("not a url", ["expected a database URL such as", "got 'not a url'"]),
        ("postgresql://u:s3cret@h:5432x/db", ["expected a database URL", "'5432x'"]),
        ("edge:s3cret@host", ["expected a database URL", "edge:***@host"]),
        ("postgresql://postgres@127.0.0.1/no_such_db", ["cannot open", '"no_such_db" does not']),
        ("postgresql://no_such_role@127.0.0.1/postgres", ["cannot open", "no_such_role"]),
        ("postgresql://postgres@no-such-host.invalid/db", ["cannot open or reach", "no-such-host"]),
    ],
)
def test_a_store_url_that_cannot_be_used_is_one_line(
    url: str,
    needles: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(STORE_ENV, raising=False)
    home = tmp_path / "hub"
    assert main(["--home", str(home), "keys", "init"]) == 0
    capsys.readouterr()
    if url == MISSING_DRIVER:
        monkeypatch.setitem(sys.modules, "psycopg", None)  # what a missing package looks like
    assert main(["--home", str(home), "--store", url, "devices", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edgehub: error: "), err
    assert "Traceback" not in err and "s3cret" not in err
    for needle in needles:
        assert needle in err, err


def test_device_text_postgresql_refuses_is_stored_cleaned_not_refused_forever() -> None:
    """A NUL character, half a surrogate pair or an overlong version: SQLite took them,
    PostgreSQL refuses them, and a status the hub cannot store the device sends again and
    again. The registry keeps them cleaned and cut; plain `postgresql://` reaches psycopg."""
    from edge_agent.protocol.messages import Status

    with fresh_database() as url:
        plain = url.replace("postgresql+psycopg://", "postgresql://")
        store = Store(plain)
        store.set_status(
            Status("pi-01", True, 1, agent_version="1.0\x00-" + "x" * 80, profile="rpi4\ud800")
        )
        (row,) = [d for d in store.devices() if d["id"] == "pi-01"]
        assert row["agent_version"] == "1.0-" + "x" * 28  # 32 characters, the NUL gone
        assert row["profile"] == "rpi4?"
        store.engine.dispose()


def test_both_ends_of_a_postgresql_session_find_a_vanished_peer_in_seconds() -> None:
    """A leader whose machine went off holds the advisory lock as long as the server keeps its
    session: TCP's defaults keep it about two hours. Every session of the store asks for
    keepalives on the hub's end (libpq) and on the server's (the session's settings); what the
    URL sets itself wins."""
    from sqlalchemy import text

    from cloud_hub.store.database import KEEPALIVE_IDLE_S, SESSION_NAME, TCP_USER_TIMEOUT_MS

    with fresh_database() as url:
        for given, idle in ((url, KEEPALIVE_IDLE_S), (f"{url}?keepalives_idle=30", 30)):
            store = Store(given)
            try:
                with store.engine.connect() as conn:
                    server = {
                        name: conn.execute(text(f"SHOW {name}")).scalar()
                        for name in ("tcp_keepalives_idle", "tcp_keepalives_count")
                    }
                    assert server == {"tcp_keepalives_idle": "5", "tcp_keepalives_count": "3"}
                    timeout = conn.execute(text("SHOW tcp_user_timeout")).scalar()
                    assert timeout == str(TCP_USER_TIMEOUT_MS)
                    libpq = conn.connection.driver_connection.info.get_parameters()  # type: ignore[union-attr]
                    assert libpq["keepalives"] == "1" and libpq["keepalives_idle"] == str(idle)
                    # the process's name on each of its sessions: a worker that ends a hung
                    # leader's lock session ends its others by it (cloud_hub.cluster.leader)
                    name = conn.execute(text("SHOW application_name")).scalar()
                    assert name == SESSION_NAME and name.startswith("edgehub:")
            finally:
                store.engine.dispose()
