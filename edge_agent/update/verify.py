"""Verification of model bundles with TUF (`tuf.ngclient`), fed by what arrived over MQTT.

The hub publishes TUF metadata retained on `fleet/tuf/...`; the agent's MQTT session puts each
payload into a `mirror.TufMirror`, and `fetcher.MqttFetcher` serves ngclient from it (there is no
HTTP server anywhere). Every trust decision is ngclient's; this module maps its verdicts to
rejection reasons and adds the one rule TUF does not know: never a lower `model_version`, unless
a signed rollback returns to a version the hub signed as a rollback target. A delta is checked
to rebuild exactly the target the command names, from the bundle the signed metadata names. It
also checks a command's signatures against the key the verified targets metadata delegates
`commands` to.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.errors import BundleRejected, ConfigError
from edge_agent.protocol.messages import DeltaRef, ModelRef
from edge_agent.protocol.reasons import Reason
from edge_agent.protocol.transfer import chunk_count
from edge_agent.system.fsutil import atomic_write
from edge_agent.update.digest import sha256
from edge_agent.update.mirror import TufMirror

if TYPE_CHECKING:
    from tuf.api.metadata import TargetFile
    from tuf.ngclient import Updater

# python-tuf (about 19 MB resident with its dependencies) is imported when an update arrives,
# not when the agent starts: most of a device's life is inference.


@dataclass(frozen=True)
class VerifiedTarget:
    path: str
    model: ModelRef
    length: int
    card_sha256: str
    info: TargetFile

    @property
    def sha256(self) -> str:
        return str(self.info.hashes["sha256"])

    @property
    def chunk_sha256(self) -> tuple[str, ...] | None:
        """The signed sha256 of each 64 KiB chunk, when the hub listed them: each chunk is
        then checked on arrival, and a bad one asked for again."""
        hashes = self.info.custom.get("chunk_sha256")
        if not isinstance(hashes, list) or len(hashes) != chunk_count(self.length):
            return None
        return tuple(str(h) for h in hashes)


def _reason(exc: Exception) -> Reason:
    from tuf.api import exceptions as tuf_exc

    if isinstance(exc, tuf_exc.ExpiredMetadataError):
        return Reason.EXPIRED
    if isinstance(exc, tuf_exc.BadVersionNumberError):
        return Reason.REPLAYED
    if isinstance(exc, tuf_exc.UnsignedMetadataError):
        return Reason.BAD_SIGNATURE
    if isinstance(exc, tuf_exc.LengthOrHashMismatchError):
        return Reason.TAMPERED
    if isinstance(exc, tuf_exc.DownloadError):
        return Reason.METADATA_UNAVAILABLE
    return Reason.UNTRUSTED_METADATA


class Verifier:
    """Looks targets up in freshly refreshed TUF metadata and checks bundle bytes against them."""

    def __init__(self, tuf_dir: Path, mirror: TufMirror, max_bundle_bytes: int) -> None:
        if not (tuf_dir / "root.json").exists():
            raise ConfigError(
                f"{tuf_dir / 'root.json'}: no trusted root; the device must be enrolled "
                "with the hub's root.json"
            )
        self.tuf_dir = tuf_dir
        self.mirror = mirror
        self.max_bundle_bytes = max_bundle_bytes
        self._lock = threading.Lock()
        self._cycles = 0  # update cycles open (`cycle`)
        self._fresh: tuple[Updater, int] | None = None  # this cycle's, with the mirror generation

    @contextlib.contextmanager
    def cycle(self) -> Iterator[None]:
        """One update cycle, as TUF's client workflow has it: one command checked and acted on
        (its signature, then its target's lookup). The metadata is refreshed at its first use
        in the cycle and reused while no new metadata arrives, instead of once per check (each
        refresh is about ten signature checks and canonical JSON encodings, and a write of the
        root history). Outside a cycle every check refreshes."""
        with self._lock:
            self._cycles += 1
        try:
            yield
        finally:
            with self._lock:
                self._cycles -= 1
                if not self._cycles:
                    self._fresh = None

    def _refreshed(self) -> Updater:
        """An ngclient Updater over what arrived, refreshed (timestamp, snapshot, targets)."""
        with self._lock:
            generation = self.mirror.generation
            if self._fresh is not None and self._fresh[1] == generation:
                return self._fresh[0]
            self._fresh = None  # a refresh that fails leaves nothing to reuse
            updater = self._refresh()
            if self._cycles:
                self._fresh = (updater, generation)
            return updater

    def _refresh(self) -> Updater:
        from tuf.api import exceptions as tuf_exc
        from tuf.ngclient import Updater, UpdaterConfig

        from edge_agent.update.fetcher import METADATA_URL, MqttFetcher

        updater = Updater(
            metadata_dir=str(self.tuf_dir),
            metadata_base_url=METADATA_URL,
            fetcher=MqttFetcher(self.mirror),
            config=UpdaterConfig(prefix_targets_with_hash=False),
            bootstrap=None,
        )
        try:
            updater.refresh()
        except (tuf_exc.RepositoryError, tuf_exc.DownloadError) as exc:
            raise BundleRejected(_reason(exc), f"TUF metadata: {exc}") from exc
        return updater

    def verify_command(self, payload: bytes, signatures: dict[str, str]) -> None:
        """`signatures` (keyid -> hex) must sign `payload` with the key the freshly verified
        targets metadata delegates `commands` to."""
        from tuf.api import exceptions as tuf_exc
        from tuf.api.metadata import Metadata, Signature, Targets

        from edge_agent.protocol.commands import COMMAND_ROLE

        self._refreshed()  # ngclient keeps what it verified as targets.json
        targets = Metadata[Targets].from_file(str(self.tuf_dir / "targets.json")).signed
        sigs = {keyid: Signature(keyid, sig) for keyid, sig in signatures.items()}
        try:
            targets.verify_delegate(COMMAND_ROLE, payload, sigs)
        except tuf_exc.UnsignedMetadataError as exc:
            raise BundleRejected(
                Reason.BAD_SIGNATURE, f"command: not signed by the hub's command key ({exc})"
            ) from exc
        except ValueError as exc:  # metadata of a hub that did not sign commands yet
            raise BundleRejected(
                Reason.UNTRUSTED_METADATA, f"targets metadata delegates no command key: {exc}"
            ) from exc

    def rollback_target(self, model: ModelRef) -> bool:
        """Whether the verified targets sign `model` as one a rollback may return to."""
        info = self._target(self._refreshed(), model.target_path)
        return info is not None and info.custom.get("rollback") is True

    @staticmethod
    def _target(updater: Updater, path: str) -> TargetFile | None:
        from tuf.api import exceptions as tuf_exc

        try:
            return updater.get_targetinfo(path)
        except (tuf_exc.RepositoryError, tuf_exc.DownloadError) as exc:
            raise BundleRejected(_reason(exc), f"TUF metadata: {exc}") from exc

    def lookup(self, path: str, expected: ModelRef, running: ModelRef | None) -> VerifiedTarget:
        """Refresh metadata, find `path`, and check it is the model and version we were told."""
        info = self._target(self._refreshed(), path)
        if info is None:
            raise BundleRejected(Reason.UNKNOWN_TARGET, f"{path} is not in the signed targets")
        custom = info.custom
        name, version = custom.get("model"), custom.get("model_version")
        if name != expected.name or version != expected.version:
            raise BundleRejected(
                Reason.MISMATCH,
                f"{path}: command said {expected}, signed metadata says {name}@{version}",
            )
        if (
            running is not None
            and running.name == expected.name
            and expected.version < (running.version)
        ):
            raise BundleRejected(
                Reason.DOWNGRADE,
                f"{expected} is older than the running {running}; versions only go up",
            )
        self._check_size(path, info.length)
        return VerifiedTarget(path, expected, info.length, str(custom.get("card_sha256")), info)

    def _check_size(self, path: str, length: int) -> None:
        if length > self.max_bundle_bytes:
            raise BundleRejected(
                Reason.OVERSIZED,
                f"{path} is {length} bytes, the device accepts at most {self.max_bundle_bytes}",
            )

    def lookup_delta(self, ref: DeltaRef, target: VerifiedTarget) -> tuple[VerifiedTarget, str]:
        """The signed delta `ref` names, checked to rebuild exactly `target` from the bundle of
        `ref.base`; with the sha256 that bundle must have (signed twice: in the delta's entry
        and in the base's own, where the hub still lists it)."""
        updater = self._refreshed()
        info = self._target(updater, ref.target)
        if info is None:
            raise BundleRejected(
                Reason.UNKNOWN_TARGET, f"{ref.target} is not in the signed targets"
            )
        pair = info.custom.get("delta")
        wanted = {
            "base": ref.base.target_path,
            "result": target.path,
            "result_sha256": target.sha256,
        }
        if not isinstance(pair, dict) or any(pair.get(k) != v for k, v in wanted.items()):
            raise BundleRejected(
                Reason.MISMATCH,
                f"{ref.target}: the command says it rebuilds {target.path} from "
                f"{ref.base.target_path}, the signed metadata says {pair!r:.200}",
            )
        base_sha256 = pair.get("base_sha256")
        base = self._target(updater, ref.base.target_path)
        if not isinstance(base_sha256, str) or (
            base is not None and base.hashes.get("sha256") != base_sha256
        ):
            raise BundleRejected(
                Reason.MISMATCH,
                f"{ref.target}: its base sha256 {base_sha256!r:.70} is not the one signed for "
                f"{ref.base.target_path}",
            )
        self._check_size(ref.target, info.length)
        delta = VerifiedTarget(ref.target, target.model, info.length, target.card_sha256, info)
        return delta, base_sha256

    def check(self, target: VerifiedTarget, data: bytes) -> None:
        """The downloaded bytes must have the signed length and hashes."""
        from tuf.api import exceptions as tuf_exc

        if len(data) < target.length:
            raise BundleRejected(
                Reason.TRUNCATED, f"{target.path}: got {len(data)} of {target.length} bytes"
            )
        if len(data) > target.length:
            raise BundleRejected(
                Reason.OVERSIZED, f"{target.path}: got {len(data)} bytes, signed {target.length}"
            )
        try:
            target.info.verify_length_and_hashes(data)
        except tuf_exc.LengthOrHashMismatchError as exc:
            raise BundleRejected(Reason.TAMPERED, f"{target.path}: {exc}") from exc


def install_trusted_root(tuf_dir: Path, root: bytes) -> None:
    """Enrollment: the device starts trusting the hub's root metadata."""
    atomic_write(tuf_dir / "root.json", root)


def sha256_hex(data: bytes) -> str:
    return sha256(data).hexdigest()
