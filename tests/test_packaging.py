"""What the wheel ships: every folder of the packages (data folders too, or setuptools warns
that one is "absent from the packages configuration"), and the license setup.cfg names."""

from __future__ import annotations

import configparser
from pathlib import Path

from setuptools import find_namespace_packages

ROOT = Path(__file__).resolve().parent.parent


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_every_shipped_folder_is_a_package() -> None:
    find = _setup_cfg()["options.packages.find"]
    packages = set(
        find_namespace_packages(
            str(ROOT), include=_lines(find["include"]), exclude=_lines(find["exclude"])
        )
    )
    tops = {p.split(".")[0] for p in packages}
    assert tops == {"edge_agent", "cloud_hub", "converters", "firmware_configs"}
    for top in tops:
        for folder in [ROOT / top, *(ROOT / top).rglob("*")]:
            if not folder.is_dir() or folder.name == "__pycache__":
                continue
            if any(f.is_file() for f in folder.iterdir()):
                name = ".".join(folder.relative_to(ROOT).parts)
                assert name in packages, f"{name}: files there but not a package in setup.cfg"
    assert not any("__pycache__" in p for p in packages)


def test_the_license_is_there() -> None:
    meta = _setup_cfg()["metadata"]
    assert meta["license"] == "Apache-2.0"
    text = (ROOT / meta["license_files"].strip()).read_text()
    assert text.lstrip().startswith("Apache License")
    assert "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_every_command_the_wheel_installs_exists() -> None:
    """Each console script names a function that is there (a module moved under it would
    leave `edgehub` a traceback for everyone who installs the package)."""
    import importlib

    scripts = _lines(_setup_cfg()["options.entry_points"]["console_scripts"])
    assert {s.split("=")[0].strip() for s in scripts} == {"edgehub", "edge-agent"}
    for script in scripts:
        target = script.split("=", 1)[1].strip()
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function, None)), script
