"""`edgehub broker-config` on a real mosquitto: a device reads and writes only its own topics,
cannot pose as another device or take over its session; passwords and TLS client certificates."""

from __future__ import annotations

import base64
import datetime
import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.broker.config import TlsFiles, conf_text
from cloud_hub.broker.dynsec import (
    HUB_ROLE,
    SALT_BYTES,
    device_acls,
    dynsec_config,
    hub_acls,
    password_fields,
)
from cloud_hub.broker.local import RunningBroker, free_port, start_mosquitto
from cloud_hub.cli import app as hub_cli
from cloud_hub.rollout.operations import init_hub
from cloud_hub.store.database import Store
from cloud_hub.store.url import store_url
from edge_agent.protocol.topics import DEVICE_DOWN, DEVICE_UP, Topics
from tests.support.mqtt_cli import Login, MqttCli

WAIT_S = 15
DEVICES = ("pi-a", "pi-b")
HUB_READS = tuple(f"edgefleet/dev/+/{kind}" for kind in DEVICE_UP)  # what its role may read


class Client:
    """A paho client that records what it receives and whether the broker let it in."""

    def __init__(
        self,
        port: int,
        client_id: str,
        user: str | None = None,
        password: str | None = None,
        tls: tuple[Path, Path, Path] | None = None,
        subscribe: tuple[str, ...] = (),
    ) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.changed = threading.Condition()
        self.connack: Any = None
        self.disconnected = False
        self._subscribe = subscribe
        self.c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
        )
        if user is not None:
            self.c.username_pw_set(user, password)
        if tls is not None:
            ca, cert, key = tls
            self.c.tls_set(str(ca), str(cert), str(key), cert_reqs=ssl.CERT_REQUIRED)
            self.c.tls_insecure_set(True)  # the test CA names no host
        self.c.on_connect = self._connected
        self.c.on_message = self._message
        self.c.on_disconnect = self._disconnected
        self.subscribed = 0
        self.c.on_subscribe = self._subscribed
        self.c.connect_async("127.0.0.1", port)
        self.c.loop_start()
        self.wait("CONNACK", lambda: self.connack is not None)

    def _subscribed(self, *_: Any) -> None:
        with self.changed:
            self.subscribed += 1
            self.changed.notify_all()

    def wait_subscribed(self) -> None:
        self.wait("SUBACKs", lambda: self.subscribed == len(self._subscribe))

    def _connected(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        with self.changed:
            self.connack = reason
            if not reason.is_failure:
                for topic in self._subscribe:
                    self.c.subscribe(topic, qos=1)
            self.changed.notify_all()

    def _disconnected(self, *_: Any) -> None:
        with self.changed:
            self.disconnected = True
            self.changed.notify_all()

    def _message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.changed:
            self.messages.append((msg.topic, msg.payload))
            self.changed.notify_all()

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def wait(self, what: str, check: Any, timeout: float = WAIT_S) -> None:
        with self.changed:
            assert self.changed.wait_for(check, timeout), f"timed out waiting for {what}"

    def got(self, payload: bytes) -> bool:
        return any(p == payload for _, p in self.messages)

    def publish(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(WAIT_S)

    def stop(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@dataclass
class Secured:
    broker: RunningBroker
    port: int
    out: Path
    credentials: dict[str, str]
    clients: list[Client]

    def client(self, client_id: str, user: str | None = None, **kw: Any) -> Client:
        password = self.credentials.get(user or "", "wrong") if user else None
        c = Client(self.port, client_id, user, password, **kw)
        self.clients.append(c)
        return c


def _hub_with_devices(tmp_path: Path) -> Path:
    home = tmp_path / "hub"
    init_hub(home)
    store = Store(store_url(home))
    for device in DEVICES:
        store.register(device)
    return home


def _start(conf: Path, tmp_path: Path, binary: str) -> RunningBroker:
    """The generated mosquitto.conf as it is (its own listener next to the harness's)."""
    return start_mosquitto(tmp_path / "mq", extra_config=conf.read_text(), binary=binary)


@pytest.fixture
def secured(mosquitto_binary: str, tmp_path: Path) -> Iterator[Secured]:
    home = _hub_with_devices(tmp_path)
    out, port = tmp_path / "broker", free_port()
    argv = ["--home", str(home), "broker-config", "--out", str(out), "--port", str(port)]
    assert hub_cli.main(argv) == 0
    credentials = json.loads((out / "credentials.json").read_text())
    broker = _start(out / "mosquitto.conf", tmp_path, mosquitto_binary)
    s = Secured(broker, port, out, credentials, [])
    try:
        yield s
    finally:
        for c in s.clients:
            c.stop()
        broker.stop()


# ---- pure parts -----------------------------------------------------------------------------
def test_passwords_are_hashed_as_mosquitto_hashes_them(tmp_path: Path) -> None:
    """mosquitto_passwd's own `$7$` line for a password, and ours with its salt: one hash."""
    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        pytest.skip("mosquitto_passwd is not installed")
    pw_file = tmp_path / "passwd"
    subprocess.run([passwd, "-b", "-c", str(pw_file), "pi-a", "s3cret"], check=True)
    _, iterations, salt, digest = pw_file.read_text().strip().split(":")[1].split("$")[1:]
    ours = password_fields("s3cret", base64.b64decode(salt))
    assert (ours["iterations"], ours["salt"], ours["password"]) == (int(iterations), salt, digest)
    assert len(base64.b64decode(ours["salt"])) == SALT_BYTES == 12  # mosquitto 2.0's SALT_LEN


def _rules(acls: list[dict[str, object]]) -> set[tuple[object, object]]:
    assert all(a["allow"] is True for a in acls)
    return {(a["acltype"], a["topic"]) for a in acls}


def test_a_devices_role_follows_the_topic_table() -> None:
    rules = _rules(device_acls(Topics("site/one"), "pi-a"))
    dev = "site/one/dev/pi-a"
    assert rules == {
        *(("publishClientSend", f"{dev}/{k}") for k in DEVICE_UP),
        *(("publishClientReceive", f"{dev}/{k}") for k in DEVICE_DOWN),
        *(("subscribeLiteral", f"{dev}/{k}") for k in DEVICE_DOWN),
        ("publishClientReceive", "site/one/fleet/tuf/#"),
        ("subscribePattern", "site/one/fleet/tuf/#"),
    }
    assert ("publishClientSend", f"{dev}/labels") in rules  # ground truth, DESIGN.md's table
    assert not any("+" in topic or "$share" in topic for _, topic in rules)  # type: ignore[operator]


def test_the_hubs_role_reads_every_device_alone_or_in_a_group() -> None:
    rules = _rules(hub_acls(Topics()))
    assert ("subscribePattern", "edgefleet/dev/+/telemetry") in rules
    assert ("subscribePattern", "$share/+/edgefleet/dev/+/telemetry") in rules
    assert ("publishClientReceive", "edgefleet/dev/+/telemetry") in rules
    assert ("publishClientSend", "edgefleet/dev/+/cmd") in rules
    assert ("publishClientSend", "edgefleet/fleet/tuf/#") in rules
    assert ("publishClientSend", "edgefleet/dev/+/telemetry") not in rules  # it cannot forge


def test_every_default_is_deny_and_every_user_has_its_role() -> None:
    body = dynsec_config(Topics(), DEVICES, ("edgehub", "edgehub-a"), None)
    assert body["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }
    roles = {c["username"]: [r["rolename"] for r in c["roles"]] for c in body["clients"]}
    assert roles == {
        "edgehub": [HUB_ROLE],
        "edgehub-a": [HUB_ROLE],
        "pi-a": ["edgefleet-device-pi-a"],
        "pi-b": ["edgefleet-device-pi-b"],
    }
    assert {r["rolename"] for r in body["roles"]} == {HUB_ROLE, *(v[0] for v in roles.values())}
    assert not any("password" in c for c in body["clients"])  # TLS client certificates


def test_the_listener_binds_a_named_address_and_says_when_it_is_not_encrypted(
    tmp_path: Path,
) -> None:
    plugin, dynsec = tmp_path / "dynsec.so", tmp_path / "dynsec.json"
    clear = conf_text(8883, plugin, dynsec)
    assert "listener 8883 127.0.0.1\n" in clear
    assert "# WARNING: no TLS: passwords cross the network in clear" in clear
    assert "\ncafile " not in clear
    everywhere = conf_text(8883, plugin, dynsec, "0.0.0.0")
    assert "listener 8883 0.0.0.0\n" in everywhere
    assert "listener 1884 ::1\n" in conf_text(1884, plugin, dynsec, "::1")
    files = [tmp_path / n for n in ("ca.crt", "broker.crt", "broker.key")]
    tls = conf_text(8883, plugin, dynsec, "0.0.0.0", TlsFiles(*files))
    assert "WARNING" not in tls
    assert f"cafile {files[0]}\ncertfile {files[1]}\nkeyfile {files[2]}\n" in tls
    assert "require_certificate false" in tls and "use_identity_as_username" not in tls
    certs = conf_text(8883, plugin, dynsec, "0.0.0.0", TlsFiles(*files, client_certificates=True))
    assert "require_certificate true\nuse_identity_as_username true" in certs
    for text in (clear, tls, certs):
        assert f"plugin {plugin}\nplugin_opt_config_file {dynsec}\n" in text
        assert "acl_file" not in text and "password_file" not in text  # one mechanism


# ---- on a real mosquitto ----------------------------------------------------------------------
def test_files_written_and_passwords_kept_on_a_second_run(secured: Secured, tmp_path: Path) -> None:
    assert set(secured.credentials) == {"edgehub", *DEVICES}
    assert (secured.out / "credentials.json").stat().st_mode & 0o077 == 0
    assert (secured.out / "dynamic-security.json").stat().st_mode & 0o077 == 0
    conf = (secured.out / "mosquitto.conf").read_text()
    assert "use_username_as_clientid true" in conf
    assert "allow_anonymous false" in conf
    Store(store_url(tmp_path / "hub")).register("pi-c")
    argv = ["--home", str(tmp_path / "hub"), "broker-config", "--out", str(secured.out)]
    assert hub_cli.main([*argv, "--port", str(secured.port)]) == 0
    again = json.loads((secured.out / "credentials.json").read_text())
    assert {k: again[k] for k in secured.credentials} == secured.credentials
    assert "pi-c" in again


def test_strangers_and_wrong_passwords_are_refused(secured: Secured) -> None:
    assert not secured.client("anon").accepted
    assert secured.client("pi-b", "pi-b").accepted  # its own password works
    wrong = Client(secured.port, "pi-b", "pi-b", secured.credentials["pi-a"])
    secured.clients.append(wrong)
    assert not wrong.accepted  # A's password does not open B's account


def test_device_cannot_publish_on_another_devices_topics(secured: Secured) -> None:
    hub = secured.client("edgehub", "edgehub", subscribe=HUB_READS)
    hub.wait_subscribed()
    a = secured.client("pi-a", "pi-a")
    assert a.accepted
    for kind in ("status", "telemetry", "drift", "events"):
        a.publish(f"edgefleet/dev/pi-b/{kind}", f"forged {kind}".encode())
    a.publish("edgefleet/fleet/tuf/timestamp.json", b"forged metadata")
    a.publish("edgefleet/dev/pi-a/telemetry", b"mine")  # after the forgeries, in order
    hub.wait("A's own telemetry at the hub", lambda: hub.got(b"mine"))
    assert [t for t, _ in hub.messages] == ["edgefleet/dev/pi-a/telemetry"]


def test_device_cannot_read_another_devices_commands(secured: Secured) -> None:
    topics = (
        "edgefleet/dev/pi-b/cmd",
        "edgefleet/dev/+/cmd",
        "edgefleet/#",
        "edgefleet/dev/pi-a/cmd",
    )
    a = secured.client("pi-a", "pi-a", subscribe=topics)
    b = secured.client("pi-b", "pi-b", subscribe=("edgefleet/dev/pi-b/cmd",))
    hub = secured.client("edgehub", "edgehub")
    a.wait_subscribed()
    b.wait_subscribed()
    hub.publish("edgefleet/dev/pi-b/cmd", b"for B")
    hub.publish("edgefleet/dev/pi-a/cmd", b"for A")
    b.wait("B's command", lambda: b.got(b"for B"))
    a.wait("A's command", lambda: a.got(b"for A"))
    assert not a.got(b"for B")
    assert all(t == "edgefleet/dev/pi-a/cmd" for t, _ in a.messages)


def test_device_cannot_take_over_another_devices_session(secured: Secured) -> None:
    b = secured.client("pi-b", "pi-b", subscribe=("edgefleet/dev/pi-b/cmd",))
    hub = secured.client("edgehub", "edgehub")
    b.wait_subscribed()
    hub.publish("edgefleet/dev/pi-b/cmd", b"first")
    b.wait("B's first command", lambda: b.got(b"first"))
    # A logs in with its own credentials but B's client id: mosquitto makes its id "pi-a"
    a = secured.client(
        "pi-b", "pi-a", subscribe=("edgefleet/dev/pi-b/cmd", "edgefleet/dev/pi-a/cmd")
    )
    assert a.accepted
    a.wait_subscribed()
    hub.publish("edgefleet/dev/pi-b/cmd", b"second")
    hub.publish("edgefleet/dev/pi-a/cmd", b"for A")
    b.wait("B's second command", lambda: b.got(b"second"))
    a.wait("A's own command", lambda: a.got(b"for A"))
    assert not b.disconnected  # B's connection was not taken over
    assert not a.got(b"first") and not a.got(b"second")  # nor its session or its queue


# ---- TLS client certificates ------------------------------------------------------------------
def _cert(
    folder: Path, name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def test_tls_client_certificates_name_the_device(mosquitto_binary: str, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = _cert(pki, "test-ca", None)
    for name in ("broker", "edgehub", *DEVICES):
        _cert(pki, name, ca)
    home = _hub_with_devices(tmp_path)
    out, port = tmp_path / "broker", free_port()
    argv = ["--home", str(home), "broker-config", "--out", str(out), "--port", str(port), "--tls"]
    files = ["--cafile", str(pki / "test-ca.crt"), "--certfile", str(pki / "broker.crt")]
    assert hub_cli.main([*argv, *files, "--keyfile", str(pki / "broker.key")]) == 0
    assert not (out / "credentials.json").exists()  # no passwords: the certificates name them
    broker = _start(out / "mosquitto.conf", tmp_path, mosquitto_binary)
    clients: list[Client] = []

    def tls(name: str, client_id: str, **kw: Any) -> Client:
        c = Client(
            port,
            client_id,
            tls=(pki / "test-ca.crt", pki / f"{name}.crt", pki / f"{name}.key"),
            **kw,
        )
        clients.append(c)
        return c

    try:
        hub = tls("edgehub", "edgehub", subscribe=HUB_READS)
        a = tls("pi-a", "pi-b")  # the certificate names it, whatever the client id says
        assert hub.accepted and a.accepted
        hub.wait_subscribed()
        a.publish("edgefleet/dev/pi-b/status", b"forged")
        a.publish("edgefleet/dev/pi-a/status", b"mine")
        hub.wait("A's own status", lambda: hub.got(b"mine"))
        assert not hub.got(b"forged")
        # without a certificate, or with one from another CA, nobody gets in
        ctx = ssl.create_default_context(cafile=str(pki / "test-ca.crt"))
        ctx.check_hostname = False
        assert _refused(port, ctx)
        stranger = tmp_path / "stranger"
        stranger.mkdir()
        _cert(stranger, "pi-a", _cert(stranger, "other-ca", None))
        ctx.load_cert_chain(stranger / "pi-a.crt", stranger / "pi-a.key")
        assert _refused(port, ctx)
    finally:
        for c in clients:
            c.stop()
        broker.stop()


CONNECT = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"  # MQTT 3.1.1, empty client id


def _refused(port: int, ctx: ssl.SSLContext) -> bool:
    """True when the broker ends the TLS session instead of answering a CONNECT."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as raw,
            ctx.wrap_socket(raw) as tls_sock,
        ):
            tls_sock.sendall(CONNECT)
            return tls_sock.recv(4) == b""
    except (ssl.SSLError, ConnectionError):
        return True


def test_passwords_go_over_tls_where_certificates_are_given(
    mosquitto_binary: str,
    mosquitto_clients: MqttCli,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    _cert(pki, "broker", _cert(pki, "test-ca", None))
    home = _hub_with_devices(tmp_path)
    out, port = tmp_path / "broker", free_port()
    argv = ["--home", str(home), "broker-config", "--out", str(out), "--port", str(port)]
    files = ["--cafile", str(pki / "test-ca.crt"), "--certfile", str(pki / "broker.crt")]
    assert hub_cli.main([*argv, *files, "--keyfile", str(pki / "broker.key")]) == 0
    said = capsys.readouterr().out
    assert "TLS: clients check the broker's certificate" in said and "in clear" not in said
    credentials = json.loads((out / "credentials.json").read_text())
    broker = _start(out / "mosquitto.conf", tmp_path, mosquitto_binary)
    try:
        login = Login(port, "pi-a", credentials["pi-a"], cafile=pki / "test-ca.crt")
        assert mosquitto_clients.suback(login, "edgefleet/dev/pi-a/cmd") == [1]
        with pytest.raises(AssertionError, match="no SUBACK"):  # a wrong password over TLS
            mosquitto_clients.suback(Login(port, "pi-a", "wrong", cafile=login.cafile), "x/y")
        # in clear, the listener answers a CONNECT with nothing but a closed connection
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as raw:
            raw.sendall(CONNECT)
            try:
                answer = raw.recv(4)
            except ConnectionResetError:
                answer = b""
        assert not answer.startswith(b"\x20")  # no CONNACK
    finally:
        broker.stop()


def test_without_certificates_broker_config_says_passwords_go_in_clear(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = _hub_with_devices(tmp_path)
    argv = ["--home", str(home), "broker-config", "--out", str(tmp_path / "o")]
    assert hub_cli.main(argv) == 0
    said = capsys.readouterr().out
    assert "warning: no TLS: passwords cross the network in clear" in said
    assert "the listener is 127.0.0.1:8883: only this machine reaches it" in said
    assert "restart mosquitto" in said
    assert hub_cli.main([*argv, "--bind", "0.0.0.0"]) == 0
    said = capsys.readouterr().out
    assert "the listener is 0.0.0.0:8883\n" in said and "in clear" in said
    assert "listener 8883 0.0.0.0" in (tmp_path / "o" / "mosquitto.conf").read_text()


# ---- bad input --------------------------------------------------------------------------------
def _hub_fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = hub_cli.main(list(argv))
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("edgehub: error: "), err
    return err


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--port", "eighty"], "--port: expected 1 to 65535, got 'eighty'"),
        (["--port", "70000"], "--port: expected 1 to 65535, got 70000"),
        (["--tls"], "--tls: expected --cafile, --certfile and --keyfile"),
        (["--tls", "--cafile", "ca.pem"], "--tls: expected --cafile, --certfile and --keyfile"),
        (
            ["--cafile", "ca.pem", "--keyfile", "k.pem"],
            "--cafile, --certfile, --keyfile: expected all three (TLS on the listener) or none, "
            "got only --cafile, --keyfile",
        ),
        (
            ["--tls", "--cafile", "x", "--certfile", "y", "--keyfile", "z"],
            "--cafile/--certfile/--keyfile: no such file",
        ),
        (
            ["--cafile", "x", "--certfile", "y", "--keyfile", "z"],
            "--cafile/--certfile/--keyfile: no such file",
        ),
        (["--prefix", "a/+/b"], "topic prefix: expected levels"),
        (["--hub-user", "pi-a"], "'pi-a' is reserved (it is the hub's broker user)"),
        (["--hub-user", "pi"], "'pi-a' is reserved (names pi-* belong to the hub's workers"),
        (["--hub-user", "bad/user"], "--hub-user: expected"),
        (["--bind", "every interface"], "--bind: expected an IP address of this machine"),
        (["--bind", ""], "--bind: expected an IP address"),
        (["--worker", "a b"], "--worker: expected a worker name"),
        (["--dynsec-plugin", "nowhere.so"], "--dynsec-plugin: no such file"),
    ],
)
def test_broker_config_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expected: str
) -> None:
    home = _hub_with_devices(tmp_path)
    err = _hub_fails(
        capsys, "--home", str(home), "broker-config", "--out", str(tmp_path / "o"), *extra
    )
    assert expected in err


def test_broker_config_where_it_cannot_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = _hub_with_devices(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    err = _hub_fails(capsys, "--home", str(home), "broker-config", "--out", str(blocker / "x"))
    assert "cannot write the broker configuration" in err


def test_broker_config_with_garbage_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = _hub_with_devices(tmp_path)
    out = tmp_path / "o"
    out.mkdir()
    (out / "credentials.json").write_text('["not", "an", "object"]')
    err = _hub_fails(capsys, "--home", str(home), "broker-config", "--out", str(out))
    assert "expected an object of user -> password strings" in err
