"""`edgehub serve` with its dashboard: the process a user starts, and its flag mistakes."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fastapi import FastAPI
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from cloud_hub.broker.local import RunningBroker
from cloud_hub.cli import app as hub_cli
from cloud_hub.rollout.operations import init_hub
from cloud_hub.web.server import TOKEN_ENV, WebServer, load_token, parse_listen
from edge_agent.errors import ConfigError
from tests.support.dashboard_fleet import TOKEN, SimDevice, http


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:0", ("::1", 0)), ("hub:80", ("hub", 80))],
)
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


def test_tokens(tmp_path: Path) -> None:
    token, generated = load_token({}, None)
    assert generated and len(token) >= 16
    assert load_token({TOKEN_ENV: TOKEN}, None) == (TOKEN, False)
    (tmp_path / "t").write_text(f"{TOKEN}\n")
    assert load_token({TOKEN_ENV: "ignored-because-the-file-wins"}, tmp_path / "t") == (
        TOKEN,
        False,
    )
    with pytest.raises(ConfigError, match=r"\$EDGEHUB_TOKEN: expected a token of at least 16"):
        load_token({TOKEN_ENV: "short"}, None)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "hub"
    init_hub(path)
    return path


def serve_fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert hub_cli.main(list(argv)) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--http", "8080"], "--http: expected HOST:PORT such as 127.0.0.1:8080, got '8080'"),
        (["--http", "localhost:99999"], "got 'localhost:99999'"),
        (["--http", ":80"], "got ':80'"),
        (["--token-file", "no-such-file"], "--token-file no-such-file: cannot read it"),
        (["--token-file", "short"], "--token-file short: expected a token of at least 16"),
        (["--http", "off", "--ha-discovery", "--ha-prefix", "h a/#"], "--ha-prefix: expected"),
    ],
)
def test_serve_flag_mistakes_are_one_line(
    flags: list[str],
    says: str,
    home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "short").write_text("abc\n")
    err = serve_fails(capsys, "--home", str(home), "serve", *flags)
    assert says in err


def test_serve_needs_a_hub(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = serve_fails(capsys, "--home", str(tmp_path / "nothing"), "serve")
    assert "no hub here; run `edgehub" in err


def test_serve_says_when_the_port_is_taken(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        err = serve_fails(capsys, "--home", str(home), "serve", "--http", f"127.0.0.1:{port}")
    assert f"dashboard: cannot listen on 127.0.0.1:{port}: Address already in use" in err


@pytest.mark.broker
def test_serve_runs_the_hub_with_dashboard_metrics_and_discovery(
    broker: RunningBroker, home: Path
) -> None:
    configs: list[str] = []
    seen = threading.Condition()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with seen:
            configs.append(msg.topic)
            seen.notify_all()

    ha = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    ha.on_message = on_message
    ha.connect(broker.host, broker.port)
    ha.subscribe("homeassistant/sensor/#", qos=1)
    ha.loop_start()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "cloud_hub.cli.app", "--home", str(home), "serve"),
            *("--broker-port", str(broker.port), "--http", "127.0.0.1:0"),
            *("--open-reads", "--ha-discovery"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "EDGEHUB_TOKEN": TOKEN, "COLUMNS": "200"},
    )
    device = None
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().decode(), proc.stdout.readline().decode()]
        assert lines[1].startswith("dashboard on http://127.0.0.1:"), lines
        url = lines[1].split()[-1]
        assert "#token" not in url  # a token the user chose is not printed
        device = SimDevice(broker, "pi-9")
        device.status()
        with seen:  # the hub's discovery saw the device: the hub is up and listening
            assert seen.wait_for(lambda: len(configs) == 4, 30), configs
        status, _, body = http(url + "metrics", token=None)
        assert status == 200
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        assert {"edgefleet_devices_online", "edgefleet_drift_psi"} <= names
        status, _, body = http(url + "api/rollouts/r-1/pause", "POST", token=None)
        assert status == 401 and "error" in json.loads(body)
        assert http(url + "api/rollouts/r-1/pause", "POST")[0] == 404
    finally:
        if device is not None:
            device.stop()
        ha.loop_stop()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err


class _Kept(logging.Handler):
    """A handler that remembers being closed."""

    closed = False

    def emit(self, record: logging.LogRecord) -> None:
        pass

    def close(self) -> None:
        self.closed = True
        super().close()


def test_the_dashboard_leaves_the_processes_logging_alone() -> None:
    """uvicorn's own logging config (dictConfig) shuts down every handler the process has: the
    hub's, and absl's once a conversion imported TensorFlow, which then closes the stream it
    writes to. The dashboard must not reconfigure the hub's logging."""
    kept = _Kept()
    root = logging.getLogger()
    root.addHandler(kept)
    try:
        server = WebServer(FastAPI(), "127.0.0.1", 0)
        server.stop()
        assert not kept.closed and kept in root.handlers
    finally:
        root.removeHandler(kept)
