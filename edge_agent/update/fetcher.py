"""python-tuf's ngclient fed from the broker: metadata requests answered from the `TufMirror`.

Imported only when an update is verified (see `edge_agent.update.verify`).
"""

from __future__ import annotations

from collections.abc import Iterator

from tuf.api import exceptions as tuf_exc
from tuf.ngclient.fetcher import FetcherInterface

from edge_agent.update.mirror import TufMirror

METADATA_URL = "mqtt:/tuf/"


class MqttFetcher(FetcherInterface):
    """Serves ngclient's metadata requests from the mirror; 404 for what has not arrived."""

    def __init__(self, mirror: TufMirror) -> None:
        self.mirror = mirror

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(METADATA_URL):
            raise tuf_exc.DownloadHTTPError(f"{url}: only TUF metadata travels this way", 404)
        name = url[len(METADATA_URL) :]
        if name.endswith(".root.json"):  # ngclient asks for N.root.json
            name = f"root/{name.split('.')[0]}.json"
        data = self.mirror.get(name)
        if data is None:
            raise tuf_exc.DownloadHTTPError(f"{name} has not arrived on the broker", 404)
        return iter([data])
