"""The bundle: one zip with `card.json` and the model file the card names.

Written atomically (temp file in the target folder, fsync, rename, fsync of the folder) and
byte-for-byte reproducible: fixed member order, timestamps, permissions and JSON layout, so the
same card and model always give the same bundle (and the same TUF target hash).

The card is deflated (its text shrinks to a few percent); the model file is stored as it is, so
that a fine-tuned version's weights sit at the same place in the zip as the version before, a
step or two apart, and the delta the hub sends instead of the whole bundle stays small
(edge_agent/update/delta.py; deflate would have changed every byte after the first change).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_agent.errors import BadDataError
from edge_agent.system.fsutil import atomic_write, storage_error

CARD_MEMBER = "card.json"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_MEMBER_MODE = 0o644


def card_json(card: dict[str, Any]) -> bytes:
    """The canonical card.json bytes: sorted keys, strict JSON (no NaN), UTF-8, trailing newline."""
    try:
        text = json.dumps(card, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BadDataError(f"card: expected JSON-serializable values, got {exc}") from exc
    return (text + "\n").encode("utf-8")


def bundle_bytes(
    card: dict[str, Any], model_bytes: bytes, members: Mapping[str, bytes] | None = None
) -> bytes:
    """The zip archive, in memory; `members` what else the card names (its sample)."""
    model_file = card.get("model_file")
    if not isinstance(model_file, str) or not model_file or "/" in model_file:
        raise BadDataError(f"card.model_file: expected a plain file name, got {model_file!r}")
    if model_file == CARD_MEMBER:
        raise BadDataError(f"card.model_file: expected a name other than {CARD_MEMBER!r}")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(_member(CARD_MEMBER, zipfile.ZIP_DEFLATED), card_json(card))
        zf.writestr(_member(model_file, zipfile.ZIP_STORED), model_bytes)
        for name, data in sorted((members or {}).items()):
            zf.writestr(_member(name, zipfile.ZIP_DEFLATED), data)
    return buf.getvalue()


def write_bundle(
    path: Path | str,
    card: dict[str, Any],
    model_bytes: bytes,
    members: Mapping[str, bytes] | None = None,
) -> None:
    """Write the bundle to `path` (creating its folder), replacing any file there only once the
    new one is complete and on disk; StorageError (with the system's reason) if it cannot."""
    data = bundle_bytes(card, model_bytes, members)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data, mode=_MEMBER_MODE)
    except OSError as exc:  # a folder we may not write, a full disk, a file in the way
        raise storage_error(exc, path) from exc


def _member(name: str, compress_type: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
    info.compress_type = compress_type
    info.external_attr = (0o100000 | _MEMBER_MODE) << 16
    info.create_system = 3
    return info
