"""`edge-agent run` and `edgehub serve` with no broker listening: each says so on stderr at once
(host:port and the error), keeps retrying, and says when it is connected; the hub says
"serving" only then. Real processes, read through pipes; waits are on lines, with timeouts."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from cloud_hub.broker.local import RunningBroker, free_port
from cloud_hub.harness.commands import serve_argv
from cloud_hub.rollout.operations import enroll_device, init_hub
from tests.support.processes import WAIT_S, Lines, launch, processes  # noqa: F401  (a fixture)


def test_agent_says_it_cannot_reach_the_broker(
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    port = free_port()  # nobody listens there
    init_hub(tmp_path / "hub")
    enroll_device(tmp_path / "hub", "pi-1", tmp_path / "state")
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[device]\nid = "pi-1"\nstate_dir = "state"\n[broker]\nhost = "127.0.0.1"\nport = {port}\n'
    )
    proc = launch(processes, "-m", "edge_agent.cli", "run", "--config", str(config))
    err = Lines(proc.stderr)  # type: ignore[arg-type]
    line = err.expect("WARNING", f"MQTT broker 127.0.0.1:{port}: cannot connect", "retrying")
    assert "Connection refused" in line
    assert proc.poll() is None  # still running, still retrying


def test_serve_says_serving_only_once_connected(
    tmp_path: Path,
    broker: RunningBroker,
    processes: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    home = tmp_path / "hub"
    init_hub(home)
    broker.kill()  # its port is free now: the hub starts with no broker there
    where = f"{broker.host}:{broker.port}"
    proc = launch(
        processes,
        *serve_argv(home, "127.0.0.1", broker.port),
        "--http",
        "off",
    )
    out, err = Lines(proc.stdout), Lines(proc.stderr)  # type: ignore[arg-type]
    assert out.expect("connecting") == f"hub {home}: connecting to broker {where}"
    line = err.expect(f"MQTT broker {where}: cannot connect")
    assert "Connection refused" in line
    assert proc.poll() is None
    broker.restart()
    assert out.expect("serving") == f"hub {home}: connected to broker {where}; serving"
    err.expect(f"MQTT broker {where}: connected after")
    assert out.seen == [
        f"hub {home}: connecting to broker {where}",
        f"hub {home}: connected to broker {where}; serving",
    ]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(WAIT_S) == 0


def test_serve_stops_at_once_while_the_broker_is_unreachable(
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    """SIGTERM while the hub still waits for its first connection ends it promptly (it waited
    out a 30 s connect timeout before)."""
    home = tmp_path / "hub"
    init_hub(home)
    proc = launch(
        processes,
        *serve_argv(home, "127.0.0.1", free_port()),
        "--http",
        "off",
    )
    Lines(proc.stderr).expect("cannot connect")  # type: ignore[arg-type]
    asked = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(WAIT_S) == 0
    assert time.monotonic() - asked < 10  # well under the 30 s connect wait
