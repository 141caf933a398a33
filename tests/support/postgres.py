"""A fresh PostgreSQL database per test, on the server at 127.0.0.1:5432 (trust auth, user
postgres; `.ci/run` starts it where it is not running). Where none answers the tests that need
it skip, saying why, unless EDGEFLEET_REQUIRE_POSTGRES=1 (CI sets it): then they fail."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

SERVER = os.environ.get("EDGEFLEET_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432")
REQUIRE_ENV = "EDGEFLEET_REQUIRE_POSTGRES"


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """The URL of a new, empty database, dropped afterwards."""
    name = f"edgefleet_test_{secrets.token_hex(6)}"
    admin = create_engine(f"{SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        why = f"no PostgreSQL at {SERVER}: {str(exc).splitlines()[0]}"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{why} ({REQUIRE_ENV}=1)")
        pytest.skip(why)
    try:
        yield f"{SERVER}/{name}"
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
