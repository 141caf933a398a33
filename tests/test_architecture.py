"""The house rules a newcomer relies on, checked on the source: one MQTT adapter, no modules that
import each other, every folder saying what it holds, and no test file importing another."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge_agent", "cloud_hub", "converters", "firmware_configs")
# clients that must NOT behave like the product's: the soak's garbage publisher and flooder
ADVERSARIES = {"cloud_hub/harness/soak.py"}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            found[name] = path
    return found


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_the_product_talks_mqtt_through_one_adapter() -> None:
    """One session class, one reconnect policy, one client: only edge_agent/mqtt/session.py
    opens the MQTT client (edge_agent/mqtt/client.py), and the product imports no other MQTT
    library (paho only where a client must not behave like the product's)."""
    mods = modules()
    users = {
        str(path.relative_to(ROOT))
        for name, path in mods.items()
        if not name.startswith("edge_agent.mqtt.")
        and any(n.startswith("edge_agent.mqtt.client") for n in imports_of(path))
    }
    assert users == set(), users
    session_imports = imports_of(mods["edge_agent.mqtt.session"])
    assert "edge_agent.mqtt.client" in session_imports
    paho = {
        str(path.relative_to(ROOT))
        for path in mods.values()
        if any(n == "paho" or n.startswith("paho.") for n in imports_of(path))
    }
    assert paho == ADVERSARIES


def test_no_two_modules_import_each_other() -> None:
    mods = modules()
    graph = {
        name: {m for m in imports_of(path) if m in mods and m != name}
        for name, path in mods.items()
    }
    pairs = sorted(
        (a, b) for a, deps in graph.items() for b in deps if a < b and a in graph.get(b, set())
    )
    pairs = [(a, b) for a, b in pairs if not (a.startswith(b + ".") or b.startswith(a + "."))]
    assert pairs == []


def test_every_folder_says_what_it_holds() -> None:
    for package in PACKAGES:
        for init in (ROOT / package).rglob("__init__.py"):
            doc = ast.get_docstring(ast.parse(init.read_text()))
            assert doc, f"{init.relative_to(ROOT)}: a folder needs a docstring saying what it holds"


def test_no_test_file_imports_another() -> None:
    """What tests share lives in tests/support/, not in another test file."""
    tests = ROOT / "tests"
    test_modules = {p.stem for p in tests.glob("test_*.py")}
    found = sorted(
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted(tests.glob("test_*.py"))
        for name in imports_of(path)
        if name.removeprefix("tests.").split(".")[0] in test_modules
    )
    assert found == []
