"""Device profiles, one TOML file per device class, each extending `base.toml`."""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).parent
DEFAULT_PROFILE = "raspberry-pi-4"  # the most common board; it runs tflite-runtime 2.14


def profile_path(name: str) -> Path:
    return FOLDER / f"{name}.toml"


def profile_names() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.toml") if p.stem != "base")
