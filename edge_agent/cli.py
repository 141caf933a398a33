"""`edge-agent`: the device daemon's command line."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_agent.config import load_config
from edge_agent.errors import EdgefleetError


def cmd_run(args: argparse.Namespace) -> int:
    from edge_agent.agent import Agent

    agent = Agent(load_config(Path(args.config)))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop_event.set())
    agent.start()
    agent.run_forever()
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    from edge_agent.identity import create_identity, identity_paths

    cfg = load_config(Path(args.config))
    identity = create_identity(cfg.state_dir, cfg.device_id)
    public = identity_paths(cfg.state_dir)[1]
    print(f"{identity.device_id}: identity ready; hand {public} to the hub")
    print(f"  edgehub devices enroll {identity.device_id} --public {public} --state-dir ...")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    cfg = load_config(Path(args.file))
    print(f"{args.file}: ok (device {cfg.device_id}, profile {cfg.profile_name})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cfg = load_config(Path(args.config))
    path = cfg.state_dir / "status.json"
    if not path.exists():
        raise EdgefleetError(f"{path}: no status yet; has the agent run?")
    status = json.loads(path.read_text())
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    model = status.get("model")
    stats = status.get("stats", {})
    print(f"device    {status['device']} (boot {status['boot']}, profile {status['profile']})")
    print(f"model     {model['name']}@{model['version']}" if model else "model     none")
    print(f"inferences {stats.get('inferences', 0)}, rejected {stats.get('rejected', {})}")
    print(f"buffered  {stats.get('buffered', 0)} records, dropped {stats.get('dropped', {})}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent", description="edgefleet device agent")
    p.add_argument("-v", "--verbose", action="store_true")
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
    config = sub.add_parser("config", help="device configuration").add_subparsers(
        dest="sub", required=True
    )
    sp = config.add_parser("check", help="validate a device file")
    sp.add_argument("file")
    sp.set_defaults(fn=cmd_config_check)
    return p


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
