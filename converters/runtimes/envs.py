"""Cached virtual environments holding a device's Python: an older TFLite runtime on numpy<2.

The converters only look for them (no network): `prepared_python` is the environment's Python
when it is in the cache, else None. The hub builds them (`edgehub runtimes prepare`,
cloud_hub.runtimes.prepare), with pip. The folder is `$EDGEFLEET_CACHE_DIR/runtimes/<name>/`
(default ~/.cache/edgefleet). It holds the runtime's packages and the device agent's base
requirements (numpy<2 ones where they differ), so that the agent's own code runs there
(`device_run` puts only the `edge_agent` package on its path). A `requirements.txt` inside
records what it was built with; an environment built with other requirements counts as not
prepared.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

from edge_agent.errors import ConfigError
from edge_agent.protocol.frozen import frozen

CACHE_ENV = "EDGEFLEET_CACHE_DIR"


@frozen
class EnvSpec:
    """A runtime environment: its folder name, what it is called, and what pip installs."""

    name: str  # folder under <cache>/runtimes/
    title: str  # for people: "tflite-runtime 2.14"
    requirements: tuple[str, ...]
    agent: bool = True  # with the device agent's base requirements too


def cache_dir() -> Path:
    """$EDGEFLEET_CACHE_DIR, else ~/.cache/edgefleet."""
    given = os.environ.get(CACHE_ENV)
    return Path(given) if given else Path.home() / ".cache" / "edgefleet"


def agent_requirements() -> list[str]:
    """The device agent's base requirements (edgefleet's install_requires, without extras)."""
    try:
        listed = metadata.requires("edgefleet") or []
    except metadata.PackageNotFoundError as exc:
        raise ConfigError(
            "validating on a device runtime needs edgefleet installed (pip install edgefleet, "
            "or pip install -e . in a checkout): its requirements are what a device installs"
        ) from exc
    return [r.split(";")[0].strip() for r in listed if "extra ==" not in r.replace('"', "'")]


def requirements_of(spec: EnvSpec) -> list[str]:
    """What pip installs: the runtime's packages first (numpy<2 wins), then the agent's."""
    if not spec.agent:
        return list(spec.requirements)
    names = {_name(r) for r in spec.requirements}
    return [*spec.requirements, *(r for r in agent_requirements() if _name(r) not in names)]


def env_folder(spec: EnvSpec) -> Path:
    return cache_dir() / "runtimes" / spec.name


def wanted_requirements(spec: EnvSpec) -> str:
    """The requirements.txt an environment of `spec` is built with."""
    return "\n".join(requirements_of(spec)) + "\n"


def prepared_python(spec: EnvSpec) -> Path | None:
    """The Python of `spec`'s environment when the cache holds it, built with today's
    requirements; None when it must be prepared first (`edgehub runtimes prepare`)."""
    folder = env_folder(spec)
    stamp = folder / "requirements.txt"
    python = folder / "bin" / "python"
    ready = stamp.is_file() and stamp.read_text() == wanted_requirements(spec) and python.exists()
    return python if ready else None


def _name(requirement: str) -> str:
    """The project name of a requirement string: "numpy<2" -> "numpy"."""
    for i, ch in enumerate(requirement):
        if not (ch.isalnum() or ch in "-_."):
            return requirement[:i].lower().replace("_", "-")
    return requirement.lower().replace("_", "-")
