"""The command lines the harness runs as processes of their own (after `python`): a hub and
an agent, started the way a person starts them."""

from __future__ import annotations

from pathlib import Path


def edgehub_argv(home: Path, *argv: str) -> list[str]:
    """`edgehub --home HOME ARGV...`."""
    return ["-m", "cloud_hub.cli.app", "--home", str(home), *argv]


def serve_argv(home: Path, host: str, port: int, *extra: str) -> list[str]:
    """`edgehub --home HOME serve` on the broker at host:port, with `extra` options."""
    return edgehub_argv(home, "serve", "--broker-host", host, "--broker-port", str(port), *extra)


def agent_argv(config: Path) -> list[str]:
    """`edge-agent run --config CONFIG`."""
    return ["-m", "edge_agent.cli", "run", "--config", str(config)]
