"""One hub per home: a running `edgehub serve` holds its home; a second serve or a simulate
with its own hub fails at once, naming the home and the pid; reading commands still work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cloud_hub.broker.local import free_port
from cloud_hub.harness.commands import serve_argv
from cloud_hub.home_lock import LOCK_FILE, holder, own_home
from cloud_hub.rollout.operations import init_hub
from edge_agent.errors import ConfigError
from tests.support.processes import Lines, launch, processes  # noqa: F401  (a fixture)


def edgehub(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloud_hub.cli.app", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )


def test_a_served_home_is_refused_at_once_and_read_still(
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    home = tmp_path / "hub"
    init_hub(home)
    port = str(free_port())  # no broker needed to hold the home
    serve = launch(
        processes,
        *serve_argv(home, "127.0.0.1", int(port)),
        "--http",
        "off",
    )
    Lines(serve.stdout).expect("connecting to broker")  # type: ignore[arg-type]
    in_use = (
        f"edgehub: error: hub home {home} is in use by edgehub serve (pid {serve.pid}); "
        "stop it or use another --home\n"
    )
    for argv in (["serve", "--broker-port", port, "--http", "off"], ["simulate", "--devices", "1"]):
        done = edgehub("--home", str(home), *argv)
        assert (done.returncode, done.stderr) == (1, in_use)
    for argv in (["devices", "list"], ["rollout", "list"], ["drift"]):
        done = edgehub("--home", str(home), *argv)
        assert done.returncode == 0, done.stderr
    assert serve.poll() is None  # the running hub is untouched


def test_the_lock_goes_with_its_holder(tmp_path: Path) -> None:
    with own_home(tmp_path, "edgehub simulate"):
        assert holder(tmp_path).startswith("edgehub simulate (pid ")
    with own_home(tmp_path, "edgehub serve"):  # free again, and the file names the new holder
        assert holder(tmp_path).startswith("edgehub serve (pid ")
    (tmp_path / LOCK_FILE).write_text("garbage")
    assert holder(tmp_path) == "another process"


def refusal(home: Path, command: str, shared: bool = False) -> str:
    """Why `command` may not have `home` now ("" if it may)."""
    try:
        with own_home(home, command, shared):
            return ""
    except ConfigError as exc:
        return str(exc)


def test_hubs_splitting_the_ingest_share_a_home(tmp_path: Path) -> None:
    sharer = "edgehub serve --share ingest"
    with own_home(tmp_path, sharer, shared=True):
        assert refusal(tmp_path, sharer, shared=True) == ""
        assert "is in use by edgehub serve --share ingest" in refusal(tmp_path, "edgehub simulate")
    with own_home(tmp_path, "edgehub serve"):
        assert "is in use by edgehub serve (pid " in refusal(tmp_path, sharer, shared=True)
