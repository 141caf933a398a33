"""`edge-agent`: the device daemon's command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from edge_agent import __version__
from edge_agent.cli_tools import accept_everywhere, add_completion, add_verbose
from edge_agent.config import load_config
from edge_agent.errors import ConfigError, EdgefleetError, MessageError, TransportError
from edge_agent.protocol.inputs import describe, inputs_of

# where install-service writes the unit (edge_agent.system.service_unit, imported by that command)
DEFAULT_UNIT_PATH = PurePosixPath("/etc/systemd/system/edge-agent.service")


def cmd_run(args: argparse.Namespace) -> int:
    from edge_agent.agent import Agent
    from edge_agent.system.resources import one_malloc_arena

    one_malloc_arena()  # before the agent's threads start
    agent = Agent(load_config(Path(args.config)))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop_event.set())
    agent.start()
    agent.run_forever()
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    from edge_agent.system.identity import create_identity, identity_paths

    cfg = load_config(Path(args.config))
    identity = create_identity(cfg.device.state_dir, cfg.device.id)
    public = identity_paths(cfg.device.state_dir)[1]
    print(f"{identity.device_id}: identity ready; hand {public} to the hub")
    print(f"  edgehub devices enroll {identity.device_id} --public {public} --state-dir ...")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    from edge_agent.inference.tflite import runtime_mismatch, runtime_version

    cfg = load_config(Path(args.file))
    print(f"{args.file}: ok (device {cfg.device.id}, profile {cfg.profile})")
    installed = runtime_version()
    print(
        f"  TFLite runtime here: {installed or 'none'}"
        f" (the profile's conversions are checked on {cfg.runtime.tflite})"
    )
    mismatch = runtime_mismatch(cfg.runtime.tflite, installed)
    if mismatch:  # ONNX models are unaffected: a warning, not an error
        print(f"  warning: TFLite models may not load here: {mismatch}")
    return 0


def read_status(path: Path) -> dict[str, Any]:
    """The agent's last status.json, checked against the wire contract's Status."""
    from edge_agent.protocol.messages import dump_json
    from edge_agent.protocol.records import decode_checked_status

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise EdgefleetError(f"{path}: no status yet; has the agent run?") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the agent's status ({exc.strerror})") from exc
    try:
        status = json.loads(raw.decode("utf-8"))
        if not isinstance(status, dict):
            raise MessageError(f"expected a JSON object, got {type(status).__name__}")
        decode_checked_status(dump_json(status))  # the file is a Status without the wire's "v"
    except (UnicodeDecodeError, ValueError, MessageError) as exc:
        raise ConfigError(f"{path}: expected the agent's status, {exc}") from exc
    return status


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{max(seconds, 0):.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _counts(counts: Any) -> str:
    if not isinstance(counts, dict) or not any(counts.values()):
        return "none"
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v)


def status_rows(status: dict[str, Any], heartbeat_s: float, now: float) -> list[tuple[str, str]]:
    """What `edge-agent status` shows, as (label, value) rows. Pure."""
    stats = status.get("stats") or {}
    ts = float(status.get("ts") or 0.0)
    if not ts:
        state = "offline" if not status.get("online") else "unknown (no timestamp)"
    elif not status.get("online"):
        state = f"offline (since {_ago(now - ts)})"
    elif now - ts <= max(3 * heartbeat_s, 10.0):
        state = f"running (updated {_ago(now - ts)})"
    else:
        state = f"not running? last update {_ago(now - ts)}"
    model = status.get("model")
    latency = stats.get("latency_ms") or {}
    rows = [
        ("device", str(status.get("device", "?"))),
        ("state", state),
        ("boot", str(status.get("boot", 0))),
        ("profile", str(status.get("profile") or "?")),
        ("agent", str(status.get("agent_version") or "?")),
        ("model", f"{model['name']}@{model['version']}" if model else "none"),
        ("inferences", str(stats.get("inferences", 0))),
    ]
    if latency:
        rows.append(("latency", ", ".join(f"{k} {v:.2f} ms" for k, v in latency.items())))
    rows += [
        ("rejected lines", _counts(stats.get("rejected"))),
        ("sent", _counts(stats.get("sent"))),
        ("buffered", f"{stats.get('buffered', 0)} records"),
        ("dropped", _counts(stats.get("dropped"))),
        ("bad messages", str(stats.get("bad_messages", 0))),
    ]
    inputs = inputs_of(stats)
    online = bool(status.get("online"))
    rows.append(("inputs", "unreadable" if inputs is None else describe(inputs, online)))
    rows += [(f"  {i.name}", i.detail()) for i in inputs or ()]
    return rows


def print_rows(title: str, rows: list[tuple[str, str]]) -> None:
    """A two-column table: rich when it is installed (the hub extra), aligned text otherwise."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # the base install: no rich on a device
        width = max(len(label) for label, _ in rows)
        print(title)
        for label, value in rows:
            print(f"  {label:<{width}}  {value}")
        return
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for label, value in rows:
        table.add_row(label, value)
    Console().print(table)


def cmd_status(args: argparse.Namespace) -> int:
    cfg = load_config(Path(args.config))
    status = read_status(cfg.device.state_dir / "status.json")
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    heartbeat = cfg.telemetry.status_interval_s
    print_rows(f"edge-agent {cfg.device.id}", status_rows(status, heartbeat, time.time()))
    return 0


# ---- install-service ---------------------------------------------------------------------
_UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/lib/systemd/system")


def agent_command(argv0: str | None = None) -> tuple[str, ...]:
    """How systemd should start this agent: the edge-agent script that is running now
    (sys.argv[0], resolved), else the one on PATH, else this Python with -m edge_agent.cli."""
    import shutil  # here, not for `edge-agent run`: its import costs the daemon memory

    argv0 = sys.argv[0] if argv0 is None else argv0
    if argv0 and Path(argv0).name == "edge-agent":
        found = argv0 if os.sep in argv0 else shutil.which(argv0)
        if found and os.access(found, os.X_OK) and Path(found).is_file():
            return (str(Path(found).resolve()),)
    found = shutil.which("edge-agent")
    if found:
        return (str(Path(found).resolve()),)
    # not resolved: a virtualenv's python is a symlink, and resolving it leaves the venv
    return (str(Path(sys.executable).absolute()), "-m", "edge_agent.cli")


SERIAL_GROUPS = ("dialout",)  # owns /dev/ttyUSB*, /dev/ttyACM* on Debian and Raspberry Pi OS


def _group_exists(name: str) -> bool:
    import grp  # install-service's modules load with it, not in the running agent

    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def default_user() -> str:
    """Whoever ran `sudo edge-agent install-service`, else the current user."""
    import getpass

    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (OSError, KeyError) as exc:  # a uid with no name (some containers)
        raise ConfigError(f"--user: cannot tell who runs this ({exc}); name the user") from exc


def _systemctl(systemctl: str, *argv: str) -> None:
    import subprocess

    try:
        done = subprocess.run(
            [systemctl, *argv], capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TransportError(f"systemctl {' '.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        why = lines[-1] if lines else f"exit code {done.returncode}"
        raise TransportError(f"systemctl {' '.join(argv)} failed: {why}")


def cmd_install_service(args: argparse.Namespace) -> int:
    from edge_agent.system.fsutil import atomic_write
    from edge_agent.system.service_unit import ServiceSpec, render_unit

    config = Path(os.path.abspath(args.config))
    cfg = load_config(config)  # a broken config is never installed
    import pwd

    user = args.user or default_user()
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"--user: expected an existing user, got {user!r}") from None
    groups = tuple(g for g in SERIAL_GROUPS if _group_exists(g))
    if not groups:  # systemd refuses to start a unit naming a group that does not exist
        print(
            f"note: no {' or '.join(SERIAL_GROUPS)} group here; serial ports may not open",
            file=sys.stderr,
        )
    spec = ServiceSpec(
        config=PurePosixPath(config),
        command=agent_command(),
        working_dir=PurePosixPath(config.parent),
        state_dir=PurePosixPath(os.path.abspath(cfg.device.state_dir)),
        user=user,
        description=f"edgefleet device agent ({cfg.device.id})",
        groups=groups,
    )
    text = render_unit(spec)
    if args.output == "-":
        if args.enable:
            raise ConfigError("--enable: expected the unit written to a file, got --output -")
        sys.stdout.write(text)
        return 0
    import shutil  # here, not for `edge-agent run`: its import costs the daemon memory

    output = Path(os.path.abspath(args.output))
    systemctl = shutil.which("systemctl") if args.enable else None
    if args.enable and systemctl is None:
        raise TransportError(
            "--enable: systemctl not found (is this a systemd system?); nothing was written. "
            "Leave out --enable to only write the unit"
        )
    advice = "run with sudo, or write it elsewhere with --output PATH"
    if not output.parent.is_dir():
        raise TransportError(
            f"{output}: cannot write the unit (no folder {output.parent}); {advice}"
        )
    try:
        atomic_write(output, text.encode(), mode=0o644)
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise TransportError(f"{output}: cannot write the unit ({why}); {advice}") from exc
    print(f"wrote {output} (runs {' '.join(spec.command)} as {user})")
    unit = output.name if str(output.parent) in _UNIT_DIRS else str(output)
    if systemctl is None:
        print(f"start it with: sudo systemctl daemon-reload && sudo systemctl enable --now {unit}")
        return 0
    _systemctl(systemctl, "daemon-reload")
    _systemctl(systemctl, "enable", "--now", unit)
    print(f"{output.name} enabled and started; follow it with: journalctl -u {output.name} -f")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent", description="edgefleet device agent")
    p.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    _global_options(p, False)
    sub = p.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("run", help="run the daemon")
    sp.add_argument("--config", required=True, help="the device's TOML file")
    sp.set_defaults(fn=cmd_run)
    sp = sub.add_parser("enroll", help="create the device's identity (X25519 key pair)")
    sp.add_argument("--config", required=True, help="the device's TOML file")
    sp.set_defaults(fn=cmd_enroll)
    sp = sub.add_parser("status", help="what the agent last recorded about itself")
    sp.add_argument("--config", required=True)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_status)
    sp = sub.add_parser(
        "install-service",
        help="write a systemd unit that runs the agent (and optionally enable it)",
        description="Write a systemd unit running `edge-agent run --config FILE`, restarted "
        "when it dies, stopped with SIGTERM (it drains its buffer first).",
    )
    sp.add_argument("--config", required=True, help="the device's TOML file (validated first)")
    sp.add_argument("--user", help="the user the agent runs as (default: $SUDO_USER or you)")
    sp.add_argument(
        "--output",
        default=str(DEFAULT_UNIT_PATH),
        help="where to write the unit, '-' for stdout (default: %(default)s)",
    )
    sp.add_argument(
        "--enable",
        action="store_true",
        help="then run `systemctl daemon-reload` and `systemctl enable --now` on it",
    )
    sp.set_defaults(fn=cmd_install_service)
    config = sub.add_parser("config", help="device configuration").add_subparsers(
        dest="sub", required=True
    )
    sp = config.add_parser("check", help="validate a device file")
    sp.add_argument("file")
    sp.set_defaults(fn=cmd_config_check)
    add_completion(sub, "edge-agent", build_parser)
    accept_everywhere(p, _global_options)
    return p


def _global_options(p: argparse.ArgumentParser, below: bool) -> None:
    """-v, before the subcommand or after it (`below`: the default is left to the top)."""
    add_verbose(p, below, "the agent")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s edge-agent %(levelname)s %(message)s",
    )
    try:
        return int(args.fn(args))
    except EdgefleetError as exc:
        print(f"edge-agent: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
