"""Cached virtual environments holding a device's Python: an older TFLite runtime on numpy<2.

An environment is created once per cache, under a lock (several hub processes, or test workers,
may ask at the same time), atomically: it is built in a temporary folder beside its final place
and renamed there only when pip has installed everything, so a half-built environment is never
used. Its folder is `$EDGEFLEET_CACHE_DIR/runtimes/<name>/` (default ~/.cache/edgefleet). It
holds the runtime's packages and the device agent's base requirements (numpy<2 ones where they
differ), so that the agent's own code runs there (`device_run` puts only the `edge_agent`
package on its path). A `requirements.txt` inside records what it was built with; an
environment built with other requirements is built again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edge_agent.errors import ConfigError

CACHE_ENV = "EDGEFLEET_CACHE_DIR"
PYTHON = "3.11"  # the newest Python tflite-runtime 2.14 has wheels for (cp38 to cp311)
PIP_TIMEOUT_S = 900.0


@dataclass(frozen=True)
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


def env_python(spec: EnvSpec) -> Path:
    """The Python of `spec`'s environment, created first if the cache has none (ConfigError
    in one line if it cannot be: no Python 3.11, pip cannot install the packages)."""
    root = cache_dir() / "runtimes"
    final = root / spec.name
    wanted = "\n".join(requirements_of(spec)) + "\n"
    if _ready(final, wanted):
        return final / "bin" / "python"
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{spec.name}.lock"):
        if _ready(final, wanted):  # another process built it while this one waited
            return final / "bin" / "python"
        print(
            f"edgefleet: preparing {spec.title} (first use, ~1 min) in {final} ...",
            file=sys.stderr,
            flush=True,
        )
        building = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=root))
        try:
            _build(building, spec, wanted)
            if final.exists():  # built with other requirements: replaced
                shutil.rmtree(final)
            building.rename(final)
        finally:
            shutil.rmtree(building, ignore_errors=True)
        print(f"edgefleet: {spec.title} ready", file=sys.stderr, flush=True)
    return final / "bin" / "python"


def _ready(folder: Path, wanted: str) -> bool:
    stamp = folder / "requirements.txt"
    return stamp.is_file() and stamp.read_text() == wanted and (folder / "bin" / "python").exists()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def base_python() -> str:
    """A Python 3.11 to build the environment with: this one's base interpreter, else
    python3.11 on PATH."""
    here = getattr(sys, "_base_executable", None) or sys.executable
    if sys.version_info[:2] == (3, 11):
        return here
    found = shutil.which(f"python{PYTHON}")
    if found is None:
        raise ConfigError(
            f"validating on a device runtime needs Python {PYTHON} (tflite-runtime 2.14 has no "
            f"wheels for Python {sys.version_info[0]}.{sys.version_info[1]}); "
            f"found no python{PYTHON} on PATH"
        )
    return found


def _build(folder: Path, spec: EnvSpec, wanted: str) -> None:
    _run([base_python(), "-m", "venv", str(folder)], spec, "creating its virtual environment")
    requirements = folder / "requirements.txt"
    requirements.write_text(wanted)
    _run(
        [
            str(folder / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "-r",
            str(requirements),
        ],
        spec,
        f"pip install {' '.join(spec.requirements)}",
    )


def _run(command: list[str], spec: EnvSpec, what: str) -> None:
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot prepare {spec.title}: {what} failed ({exc})") from exc
    if done.returncode != 0:
        raise ConfigError(f"cannot prepare {spec.title}: {what} failed: {_last_error(done.stderr)}")


def _last_error(text: str) -> str:
    """pip's own error line (the first "ERROR:"), else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors[0] if errors else lines[-1] if lines else "no output")[:300]


def _name(requirement: str) -> str:
    """The project name of a requirement string: "numpy<2" -> "numpy"."""
    for i, ch in enumerate(requirement):
        if not (ch.isalnum() or ch in "-_."):
            return requirement[:i].lower().replace("_", "-")
    return requirement.lower().replace("_", "-")
