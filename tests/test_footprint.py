"""The device footprint: the base install is the agent, and it needs nothing from the hub."""

from __future__ import annotations

import ast
import configparser
import hashlib
import json
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from cloud_hub.signing.tuf_repo import TufRepository
from converters.pipeline import build_bundle
from edge_agent.update.bundle import read_bundle
from edge_agent.update.verify import install_trusted_root

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"scikit-learn", "skl2onnx", "onnx", "tensorflow", "tensorflow-cpu", "sqlalchemy"}
PROTOCOL_ALLOWED = {"numpy", "edge_agent", "__future__"}


def _name(requirement: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _base_requirements() -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return [r for r in cfg["options"]["install_requires"].splitlines() if r.strip()]


def test_base_install_pulls_in_no_training_stack() -> None:
    """Walk the installed dependency tree of the base requirements (extras excluded)."""
    seen: set[str] = set()
    todo = [_name(r) for r in _base_requirements()]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in metadata.requires(name) or []:
            if "extra ==" in req:
                continue
            todo.append(_name(req))
    assert "onnxruntime" in seen and "tuf" in seen
    assert not seen & FORBIDDEN, f"the agent's install pulls in {sorted(seen & FORBIDDEN)}"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_edge_agent_imports_neither_hub_nor_converters() -> None:
    for path in (ROOT / "edge_agent").rglob("*.py"):
        bad = {n for n in _imports(path) if n.split(".")[0] in ("cloud_hub", "converters")}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_protocol_imports_only_stdlib_and_numpy() -> None:
    stdlib = set(sys.stdlib_module_names)
    for path in (ROOT / "edge_agent" / "protocol").rglob("*.py"):
        for name in _imports(path):
            top = name.split(".")[0]
            assert top in stdlib or top in PROTOCOL_ALLOWED, f"{path.name} imports {name}"
            if top == "edge_agent":
                assert name.startswith(("edge_agent.protocol", "edge_agent.errors")), name


BLOCKER = textwrap.dedent(
    """
    import sys
    BLOCKED = {"sklearn", "skl2onnx", "onnx", "tensorflow", "cloud_hub", "converters",
               "sqlalchemy", "rich", "paho", "orjson"}
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not on a device")
    sys.meta_path.insert(0, Block())
    """
)


def test_agent_runs_a_model_with_the_base_install_only(tmp_path: Path) -> None:
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    bundle = tmp_path / "iris-1.zip"
    build_bundle(model, x, y, name="iris", version=1, out=bundle)
    script = BLOCKER + textwrap.dedent(
        f"""
        import numpy as np
        import edge_agent.agent, edge_agent.cli
        from edge_agent.update.bundle import read_bundle
        from edge_agent.update.health import check_health
        from edge_agent.inference.runtime import load_runtime
        b = read_bundle(open({str(bundle)!r}, "rb").read(), None, 10**8)
        rt = load_runtime(b.card, b.model_bytes)
        assert check_health(b.card, rt).ok
        print(rt.predict(np.asarray(b.card.sample_inputs, dtype=np.float32)[:3]).tolist())
        bad = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
        assert not bad, bad
        # python-tuf and cryptography load when an update arrives, not for serving (memory)
        assert "tuf" not in sys.modules, "tuf imported by a serving agent"
        assert "cryptography" not in sys.modules, "cryptography imported by a serving agent"
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    predictions = json.loads(out.stdout)
    assert len(predictions) == 3
    assert np.isfinite(np.asarray(predictions, dtype=float)).all()


# what only some paths need (a TFLite version query, a misspelt name, a serial port or camera,
# image or window models, install-service), and numpy.ma (numpy 2's np.unique and
# np.percentile import it): a serving agent's resident memory holds none of them
# what the daemon never loads, serving or built: each stays resident for its life (bundles are
# read by edge_agent.update.ziparchive, temp files named by edge_agent.system.fsutil; zipfile,
# shutil and tempfile load bz2, lzma and random with them: about 1 MB)
NEVER_IN_THE_DAEMON = ("zipfile", "shutil", "tempfile", "bz2", "lzma")
NOT_FOR_SERVING = (
    "numpy.ma",
    "importlib.metadata",
    "difflib",
    "serial",
    "subprocess",
    "edge_agent.imaging",
    "edge_agent.framing.windows",
    "edge_agent.sources.camera",
    "edge_agent.system.service_unit",
    # OpenSSL and what only paho-mqtt imported: the agent's MQTT client is its own and hashes
    # with CPython's built-in SHA-256 (edge_agent.update.digest)
    "paho",
    "ssl",
    "hashlib",
    "_hashlib",
    "urllib.request",
    "http",
    "email",
    *NEVER_IN_THE_DAEMON,
)


def test_an_updated_agent_has_not_loaded_tuf(tmp_path: Path) -> None:
    """The TUF check of an update runs in a process of its own: after a signed bundle was
    looked up and its bytes checked, the agent holds neither python-tuf nor cryptography, nor
    the subprocess module that could have started it."""
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    bundle = tmp_path / "iris-1.zip"
    build_bundle(model, x, y, name="iris", version=1, out=bundle)
    data = bundle.read_bytes()
    read = read_bundle(data, None, 10**8)
    repo = TufRepository(tmp_path / "hub")
    repo.init()
    target = repo.add_bundle(read.card.model, data, read.card_sha256)
    install_trusted_root(tmp_path / "device", repo.trusted_root())
    script = BLOCKER + textwrap.dedent(
        f"""
        from pathlib import Path
        import edge_agent.agent, edge_agent.cli
        from edge_agent.protocol.messages import ModelRef
        from edge_agent.update.mirror import TufMirror
        from edge_agent.update.verify import Verifier
        mirror = TufMirror()
        for name, payload in {repo.published()!r}.items():
            mirror.put(name, payload)
        verifier = Verifier(Path({str(tmp_path / "device")!r}), mirror, 10**8)
        with verifier.cycle():
            found = verifier.lookup({target!r}, ModelRef("iris", 1), None)
        verifier.check(found, open({str(bundle)!r}, "rb").read())
        loaded = [m for m in ("tuf", "securesystemslib", "cryptography") if m in sys.modules]
        assert not loaded, loaded
        assert "subprocess" not in sys.modules  # the check is spawned with os.posix_spawn
        print(found.sha256)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == hashlib.sha256(data).hexdigest()


def test_the_agent_hashes_as_hashlib_does_without_loading_it() -> None:
    data = bytes(range(256)) * 41
    script = textwrap.dedent(
        f"""
        import sys
        from edge_agent.update.digest import sha256
        h = sha256(b"")
        h.update({data!r})
        print(h.hexdigest(), sha256({data!r}).hexdigest())
        assert "hashlib" not in sys.modules and "_hashlib" not in sys.modules
        import hashlib  # once something has loaded it, its OpenSSL does the work
        assert type(sha256(b"x")) is type(hashlib.sha256(b"x"))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    expected = hashlib.sha256(data).hexdigest()
    assert out.stdout.split() == [expected, expected]


def test_a_serving_agent_loads_only_what_serving_needs(tmp_path: Path) -> None:
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    bundle = tmp_path / "iris-1.zip"
    build_bundle(model, x, y, name="iris", version=1, out=bundle)
    lines = [",".join(repr(float(v)) for v in row).encode() for row in x]
    script = BLOCKER + textwrap.dedent(
        f"""
        import edge_agent.agent, edge_agent.cli
        from edge_agent.inference.pipeline import ActiveModel, Pipeline
        from edge_agent.update.bundle import read_bundle
        from edge_agent.update.health import check_health
        from edge_agent.inference.runtime import load_runtime
        b = read_bundle(open({str(bundle)!r}, "rb").read(), None, 10**8)
        rt = load_runtime(b.card, b.model_bytes)
        assert check_health(b.card, rt).ok
        windows = []
        pipeline = Pipeline(on_drift=lambda r: None, on_window=windows.append)
        pipeline.active = ActiveModel.build(b.card, rt, 50, 100, 10000)
        for line in {lines!r}:
            pipeline.process([("csv", line)])
        pipeline.flush_window()
        assert pipeline.stats.inferences == {len(lines)} and windows
        assert pipeline.stats.latencies()["p50"] > 0
        loaded = [m for m in {NOT_FOR_SERVING!r} if m in sys.modules]
        assert not loaded, loaded
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr


# what `edge-agent run` builds once its config is read and its model serves (the uplink, the
# update side, the results feed) or only for an input of another kind: the modules of the
# daemon's path to its first inference (edge_agent.agent, edge_agent.cli, the config, the
# pipeline) import none of them, edge_agent.agent imports each where it builds it
BUILT_BY_THE_AGENT = (
    "socket",
    "edge_agent.uplink.buffer",
    "edge_agent.uplink.delivery",
    "edge_agent.mqtt.session",
    "edge_agent.mqtt.client",
    "edge_agent.update.store",
    "edge_agent.update.mirror",
    "edge_agent.update.verify",
    "edge_agent.update.commands",
    "edge_agent.update.updater",
    "edge_agent.update.partial",
    "edge_agent.protocol.transfer",
)
# ... and what it builds only when configured: the results feed, inputs of the other kinds
ONLY_WHEN_CONFIGURED = (
    # the buffer is files of its own: SQLite (its library and caches, about 2 MB resident) is
    # loaded only to move in the buffer of an earlier release that kept it there
    "sqlite3",
    "edge_agent.uplink.legacy",
    "edge_agent.inference.results",
    "edge_agent.sources.folder",
    "edge_agent.sources.mqtt",
    "edge_agent.sources.serial_port",
    "edge_agent.sources.camera",
)


def test_the_daemon_imports_its_uplink_and_update_side_where_it_builds_them(
    tmp_path: Path,
) -> None:
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    bundle = tmp_path / "iris-1.zip"
    build_bundle(model, x, y, name="iris", version=1, out=bundle)
    lines = tmp_path / "sensor.csv"
    lines.write_text("".join(",".join(repr(float(v)) for v in row) + "\n" for row in x))
    repo = TufRepository(tmp_path / "hub")
    repo.init()
    install_trusted_root(tmp_path / "state" / "tuf", repo.trusted_root())  # enrolled
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[device]\nid = "dev-1"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[[inputs]]\nkind = "file"\npath = "{lines}"\n',
        encoding="utf-8",
    )
    script = BLOCKER + textwrap.dedent(
        f"""
        from pathlib import Path
        import edge_agent.agent, edge_agent.cli
        from edge_agent.config import load_config
        from edge_agent.inference.pipeline import ActiveModel, Pipeline
        from edge_agent.inference.runtime import load_runtime
        from edge_agent.sources.factory import input_from_config
        from edge_agent.update.bundle import read_bundle
        from edge_agent.update.health import check_health
        cfg = load_config(Path({str(config)!r}))
        (fmt, source), = [input_from_config(spec) for spec in cfg.inputs]
        b = read_bundle(open({str(bundle)!r}, "rb").read(), None, 10**8)
        rt = load_runtime(b.card, b.model_bytes)
        assert check_health(b.card, rt).ok
        pipeline = Pipeline(on_drift=lambda r: None, on_window=lambda r: None)
        pipeline.active = ActiveModel.build(b.card, rt, 50, 100, 10000)
        pipeline.process([(fmt, open({str(lines)!r}, "rb").readline().rstrip())])
        assert pipeline.stats.inferences == 1
        lazy = {BUILT_BY_THE_AGENT + ONLY_WHEN_CONFIGURED!r}
        loaded = [m for m in lazy if m in sys.modules]
        assert not loaded, loaded
        edge_agent.agent.Agent(cfg)  # builds them: the check above names what it loads
        missing = [m for m in {BUILT_BY_THE_AGENT!r} if m not in sys.modules]
        assert not missing, missing
        loaded = [m for m in {ONLY_WHEN_CONFIGURED + NEVER_IN_THE_DAEMON!r} if m in sys.modules]
        assert not loaded, loaded
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr


def test_connecting_to_a_broker_by_an_ascii_name_loads_no_idna_codec() -> None:
    """getaddrinfo encodes a str host with the IDNA codec, which loads unicodedata (about
    0.4 MB resident for the daemon's life); the agent's client hands it an ASCII name as bytes."""
    script = textwrap.dedent(
        """
        import socket, sys
        from edge_agent.mqtt.client import Client
        server = socket.create_server(("127.0.0.1", 0))
        client = Client("dev-1", clean_session=True, on_connack=print, on_message=print)
        client.open("127.0.0.1", server.getsockname()[1], 30)
        client.open("localhost", server.getsockname()[1], 30)
        client.close()
        assert "unicodedata" not in sys.modules and "encodings.idna" not in sys.modules
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
