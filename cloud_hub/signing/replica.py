"""The TUF repository in the hub's store as well as in HOME/tuf, so hub workers on other
machines, each with a hub folder of its own, serve and sign one repository.

On a PostgreSQL store (the kind workers on several machines share) every change to the
repository is made under the store's repository lock (`exclusive`, a session advisory lock):
the folder is first brought up to what the store holds (`pull`), and the files the change wrote
then go to the store (`push`), before the lock is given up. So changes made in any folder form
one history, and the metadata's versions only go up. A worker pulls whenever the store holds a
newer timestamp than its folder (each tick of `edgehub serve`, and `open_repo`), so it serves
the targets the leader signed and, should it come to lead, signs on from the newest metadata.
The first change made in a folder whose store holds no repository yet writes the whole folder.

The store is a mirror, not a signer: a pull takes metadata only when it is signed as the
folder's root says (each new root by the one before it, the other roles by the keys the newest
root names, no version going back), and a target only when the signed metadata names its
sha256. So whoever can write the database gets no worker to sign on top of, serve or install
what the hub's keys did not sign.

The folder keeps `.replica.json`, each file's sha256 as last pulled or pushed, so a pull
compares digests rather than files. A pull writes targets before metadata and timestamp.json
last, so what reads the folder never finds metadata naming a target it lacks. On SQLite the
hub is on one machine and its workers share one folder: there is no replica.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, text
from sqlalchemy.dialects import postgresql
from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from cloud_hub.store.database import Store, repo_files
from cloud_hub.store.errors import StoreError, safe_url
from cloud_hub.store.url import store_url
from edge_agent.system.fsutil import atomic_write
from edge_agent.update.digest import sha256_hex

log = logging.getLogger(__name__)

LOCK_KEY = 0x65646765666C7433  # "edgeflt3": held while a worker changes the repository
MANIFEST = ".replica.json"
TIMESTAMP = "metadata/timestamp.json"
# written last, in this order: a reader of the folder sees a consistent repository at all times
METADATA_LAST = ("metadata/targets.json", "metadata/snapshot.json", TIMESTAMP)


def replica_for(home: Path) -> Replica | None:
    """The replica of `home`'s repository, where its store is PostgreSQL."""
    url = store_url(home)
    return Replica(url) if url.startswith(("postgresql", "postgres:")) else None


def _order(name: str) -> tuple[int, str]:
    """Of metadata files: root versions first, the top-level roles last, in their order."""
    return (1 + METADATA_LAST.index(name), name) if name in METADATA_LAST else (0, name)


def files_of(folder: Path) -> list[str]:
    """The repository's files under `folder` (HOME/tuf), by name relative to it."""
    return sorted(
        p.relative_to(folder).as_posix()
        for sub in ("metadata", "targets")
        for p in (folder / sub).rglob("*")
        if p.is_file() and not p.name.startswith(".")  # no atomic_write leftovers
    )


class Replica:
    """The repository's files in the store at `url` (opened on first use)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Store(self._url).engine  # migrated: repo_files is there
        return self._engine

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """The store's repository lock, for one change (waits for another worker's)."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})

    def holds(self) -> bool:
        """Whether the store holds a repository."""
        return self.timestamp_version() is not None

    def timestamp_version(self) -> int | None:
        """The version of the timestamp the store holds (None: no repository yet)."""
        with self.engine.connect() as conn:
            q = select(repo_files.c.data).where(repo_files.c.name == TIMESTAMP)
            data = conn.execute(q).scalar()
        return None if data is None else int(json.loads(data)["signed"]["version"])

    def pull(self, folder: Path) -> int:
        """Write into `folder` what the store holds that the folder does not; returns how many
        files it wrote. One snapshot of the store; each file must match its digest, and the
        metadata must be signed as the folder's root says (`check_metadata`), targets as their
        signed hashes say: whoever can write the database cannot make this hub sign, serve or
        install what its keys did not sign."""
        manifest = _manifest(folder)
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            listed = conn.execute(select(repo_files.c.name, repo_files.c.sha256)).all()
            wanted = {
                name: digest
                for name, digest in listed
                if manifest.get(name) != digest and _local_digest(folder / name) != digest
            }

            def fetch(name: str) -> bytes:
                q = select(repo_files.c.data).where(repo_files.c.name == name)
                data = bytes(conn.execute(q).scalar_one())
                if sha256_hex(data) != wanted[name]:  # changed behind the hub's back
                    where = safe_url(self._url)
                    raise StoreError("corrupt", where, f"{name} does not match its sha256")
                return data

            if not wanted:  # the folder holds it all: noted, so the files are not read again
                if any(manifest.get(name) != digest for name, digest in listed):
                    _save_manifest(folder, {**manifest, **dict(listed)})
                return 0
            metadata = {n: fetch(n) for n in sorted(wanted) if n.startswith("metadata/")}
            try:
                signed_targets = check_metadata(folder / "metadata", metadata)
            except (ValueError, KeyError, TypeError, RepositoryError) as exc:
                where = safe_url(self._url)
                raise StoreError("corrupt", where, f"its TUF metadata: {exc}") from exc
            refused = set()
            for name in sorted(n for n in wanted if n.startswith("targets/")):
                data = fetch(name)
                signed = signed_targets.get(name.removeprefix("targets/"))
                if signed != sha256_hex(data):  # unsigned, or not what was signed: not taken
                    log.warning("the store holds %s, which the TUF metadata does not sign", name)
                    refused.add(name)
                    continue
                atomic_write(folder / name, data)
            for name in sorted(metadata, key=_order):
                atomic_write(folder / name, metadata[name])
        manifest.update({name: digest for name, digest in listed if name not in refused})
        _save_manifest(folder, manifest)
        return len(wanted) - len(refused)

    def push(self, folder: Path, names: Iterable[str]) -> None:
        """Write the files `names` of `folder` to the store, in one transaction."""
        manifest = _manifest(folder)
        rows = []
        for name in sorted(set(names)):
            data = (folder / name).read_bytes()
            rows.append({"name": name, "sha256": sha256_hex(data), "data": data})
        if not rows:
            return
        insert = postgresql.insert(repo_files)
        upsert = insert.on_conflict_do_update(
            index_elements=[repo_files.c.name],
            set_={"sha256": insert.excluded.sha256, "data": insert.excluded.data},
        )
        with self.engine.begin() as conn:
            conn.execute(upsert, rows)
        manifest.update({str(r["name"]): str(r["sha256"]) for r in rows})
        _save_manifest(folder, manifest)


def check_metadata(folder: Path, incoming: dict[str, bytes]) -> dict[str, str]:
    """Check the metadata files `incoming` ("metadata/NAME" -> bytes) against the metadata in
    `folder` as a TUF client would: each new root signed by the root before it (from the
    folder's, when it has one) and by itself, one version after the other; targets, snapshot
    and timestamp signed by the keys the newest root names for them; no role's version lower
    than the folder's. Returns the sha256 of each target the resulting targets metadata signs,
    by path. Raises ValueError (or python-tuf's errors) saying what is wrong."""

    def load(name: str) -> Metadata[Any] | None:
        data = incoming.get(f"metadata/{name}")
        if data is None:
            path = folder / name
            data = path.read_bytes() if path.exists() else None
        return None if data is None else Metadata.from_bytes(data)

    local_root = folder / "root.json"
    root = Metadata[Root].from_bytes(local_root.read_bytes()) if local_root.exists() else None
    for name in sorted(
        (n for n in incoming if n.endswith(".root.json")),
        key=lambda n: int(n.removeprefix("metadata/").split(".")[0]),
    ):
        new = Metadata[Root].from_bytes(incoming[name])
        if root is not None and new.signed.version <= root.signed.version:
            continue  # one the folder has
        if root is not None:
            if new.signed.version != root.signed.version + 1:
                raise ValueError(f"root {new.signed.version} follows root {root.signed.version}")
            root.verify_delegate(Root.type, new)
        new.verify_delegate(Root.type, new)
        root = new
    if root is None:
        raise ValueError("no root metadata")
    signed_targets: dict[str, str] = {}
    for role in (Targets.type, Snapshot.type, Timestamp.type):
        md = load(f"{role}.json")
        if md is None:
            raise ValueError(f"no {role} metadata")
        root.verify_delegate(role, md)
        mine = folder / f"{role}.json"
        held = Metadata.from_bytes(mine.read_bytes()).signed.version if mine.exists() else 0
        if md.signed.version < held:
            raise ValueError(f"{role} version {md.signed.version} is older than this folder's")
        if isinstance(md.signed, Targets):
            signed_targets = {p: t.hashes["sha256"] for p, t in md.signed.targets.items()}
    return signed_targets


def _local_digest(path: Path) -> str | None:
    try:
        return sha256_hex(path.read_bytes())
    except FileNotFoundError:
        return None


def _manifest(folder: Path) -> dict[str, str]:
    try:
        loaded = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: digests are compared with the files instead
    return {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}


def _save_manifest(folder: Path, manifest: dict[str, str]) -> None:
    atomic_write(folder / MANIFEST, json.dumps(manifest, sort_keys=True).encode(), durable=False)
