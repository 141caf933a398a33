"""Reading a verified model bundle: a zip holding card.json and the model file, nothing else."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np

from edge_agent.errors import BundleRejected
from edge_agent.protocol.card import ModelCard, parse_card
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.reasons import Reason
from edge_agent.update import ziparchive
from edge_agent.update.digest import sha256_hex


@frozen
class Bundle:
    card: ModelCard
    model_bytes: bytes
    card_sha256: str


def read_bundle(data: bytes, card_sha256: str | None, max_unpacked_bytes: int) -> Bundle:
    try:
        infos = ziparchive.members(data)
    except ziparchive.ZipError as exc:
        raise BundleRejected(Reason.BAD_BUNDLE, f"expected a zip archive: {exc}") from exc
    if "card.json" not in infos:
        raise BundleRejected(
            Reason.BAD_BUNDLE, f"expected card.json in the bundle, found {sorted(infos)}"
        )
    unpacked = sum(i.size for i in infos.values())
    if unpacked > max_unpacked_bytes:
        raise BundleRejected(
            Reason.OVERSIZED, f"bundle unpacks to {unpacked} bytes, limit {max_unpacked_bytes}"
        )
    try:
        card_raw = ziparchive.read(data, infos["card.json"])
        card = parse_card(json.loads(card_raw))
    except (json.JSONDecodeError, UnicodeDecodeError, ziparchive.ZipError) as exc:
        raise BundleRejected(Reason.BAD_CARD, f"card.json: {exc}") from exc
    if card_sha256 is not None and sha256_hex(card_raw) != card_sha256:
        raise BundleRejected(Reason.TAMPERED, "card.json does not match the signed card digest")
    expected = {"card.json", card.model_file}
    if card.sample_file is not None:
        expected.add(card.sample_file.name)
    if set(infos) != expected:
        raise BundleRejected(
            Reason.BAD_BUNDLE, f"expected members {sorted(expected)}, found {sorted(infos)}"
        )
    try:
        model_bytes = ziparchive.read(data, infos[card.model_file])
        if card.sample_file is not None:
            sample = ziparchive.read(data, infos[card.sample_file.name])
            card = replace(card, sample_array=_sample(card, sample))
    except ziparchive.ZipError as exc:
        raise BundleRejected(Reason.BAD_BUNDLE, str(exc)) from exc
    return Bundle(card, model_bytes, sha256_hex(card_raw))


def _sample(card: ModelCard, raw: bytes) -> np.ndarray:
    """The health-gate sample member: the bytes the signed card names, a float32 .npy of
    (items, *input shape) with finite values."""
    assert card.sample_file is not None
    name = card.sample_file.name
    if sha256_hex(raw) != card.sample_file.sha256:
        raise BundleRejected(Reason.TAMPERED, f"{name} does not match the card's sha256")
    try:
        x = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BundleRejected(Reason.BAD_BUNDLE, f"{name}: expected a .npy array: {exc}") from exc
    shape = (card.sample_file.items, *card.input.shape)
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.shape != shape:
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise BundleRejected(Reason.BAD_BUNDLE, f"{name}: expected float32 {shape}, got {got}")
    if not np.isfinite(x).all():
        raise BundleRejected(Reason.BAD_BUNDLE, f"{name}: expected finite values")
    return x
