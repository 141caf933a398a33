"""Serving the dashboard: the listen address, the token, and uvicorn in a thread of the hub."""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
from collections.abc import Mapping
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from edge_agent.errors import ConfigError, TransportError

TOKEN_ENV = "EDGEHUB_TOKEN"
MIN_TOKEN_CHARS = 16


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:8080` for IPv6); port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--http: expected HOST:PORT such as 127.0.0.1:8080, got {text!r}")
    return host, int(port)


def load_token(env: Mapping[str, str], token_file: Path | None) -> tuple[str, bool]:
    """The dashboard token from a file, else from $EDGEHUB_TOKEN, else a new random one.
    Returns (token, generated)."""
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--token-file {token_file}: cannot read it ({exc})") from exc
        where = f"--token-file {token_file}"
    elif env.get(TOKEN_ENV):
        token, where = env[TOKEN_ENV].strip(), f"${TOKEN_ENV}"
    else:
        return secrets.token_urlsafe(24), True
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ConfigError(
            f"{where}: expected a token of at least {MIN_TOKEN_CHARS} characters without "
            f"spaces, got {len(token)} characters"
        )
    return token, False


class WebServer:
    """uvicorn on a socket bound here, so the port is known (and taken) before start()."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
            self._sock.listen(128)
        except OSError as exc:
            self._sock.close()
            raise TransportError(
                f"dashboard: cannot listen on {host}:{port}: {exc.strerror}"
            ) from exc
        self.host, self.port = host, int(self._sock.getsockname()[1])
        # log_config=None: uvicorn leaves the process's logging as the hub set it up. Its own
        # dictConfig would shut down every handler already installed (the hub's, absl's when a
        # conversion imported TensorFlow) and give its loggers handlers of their own.
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", access_log=False, log_config=None
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="dashboard", daemon=True
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        with contextlib.suppress(OSError):
            self._sock.close()
