"""Where fleet drift's inputs come from: drift reports and device labels from the store, model
cards from the TUF repository's signed bundles. The CLI, the dashboard and /metrics all read
fleet drift through `read_fleet_drift`; the decisions are in `cloud_hub.drift.fleet`."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from cloud_hub.drift.fleet import FLEET, Labels, Report, fleet_drift, model_versions
from cloud_hub.rollout.engine import check_label
from cloud_hub.signing.tuf_repo import TufRepository
from cloud_hub.store.database import Store, typed
from edge_agent.errors import BundleRejected, ConfigError, MessageError
from edge_agent.protocol.card import ModelCard
from edge_agent.protocol.frozen import frozen
from edge_agent.protocol.messages import ModelRef, check_model_name
from edge_agent.protocol.records import DriftReport
from edge_agent.update.bundle import read_bundle

MAX_BUNDLE_BYTES = 512 * 1024 * 1024  # as `edgehub model publish` reads bundles


class PublishedCards:
    """The cards of published model versions, read from their signed bundles and checked
    against the card digest the targets metadata signs. A version's card never changes once
    published, so each is read once per process."""

    def __init__(self, repo: TufRepository | None) -> None:
        self.repo = repo  # None: no repository here (every card is missing, and says why)
        self._cards: dict[ModelRef, ModelCard] = {}

    def published(self) -> dict[str, dict[str, Any]]:
        """Target path -> its custom fields (model, model_version, card_sha256, ...)."""
        return self.repo.targets() if self.repo is not None and self.repo.initialised else {}

    def lookup(
        self, models: Iterable[ModelRef]
    ) -> tuple[dict[ModelRef, ModelCard], dict[ModelRef, str]]:
        """(cards found, why each other one is missing)."""
        cards, problems = {}, {}
        targets = self.published()
        for model in models:
            if model in self._cards:
                cards[model] = self._cards[model]
                continue
            path = model.target_path
            info = targets.get(path)
            if info is None:
                problems[model] = f"no card for {model}: it is not published on this hub"
                continue
            assert self.repo is not None  # (published() is empty without one)
            try:
                bundle = read_bundle(
                    self.repo.read_target(path), info.get("card_sha256"), MAX_BUNDLE_BYTES
                )
            except (OSError, BundleRejected) as exc:
                problems[model] = f"no card for {model}: its bundle {path} cannot be read ({exc})"
                continue
            cards[model] = self._cards[model] = bundle.card
        return cards, problems


@frozen
class FleetQuery:
    """What to merge: reports received in the last `since_s` seconds, of one model (NAME or
    NAME@VERSION) or all, and only some cohorts (`group:NAME`, `tag:NAME`; None: every
    cohort)."""

    since_s: float = 24 * 3600.0
    model: str | None = None
    cohorts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not 0 < self.since_s < float("inf"):
            raise ConfigError(f"--since: expected a duration above 0, got {self.since_s}s")
        if self.model is not None:
            model_filter(self.model)

    def wants(self, model: ModelRef) -> bool:
        return self.model is None or self.model in (model.name, str(model))


def model_filter(text: str) -> str:
    """`--model NAME` or `NAME@VERSION`, checked."""
    try:
        if "@" not in text:
            return check_model_name(text, "--model")  # its error names --model
        return str(ModelRef.parse(text))
    except MessageError as exc:
        where = "" if "@" not in text else "--model: "
        raise ConfigError(f"{where}{exc}") from exc


def cohort_names(groups: Iterable[str], tags: Iterable[str]) -> tuple[str, ...]:
    """The cohorts of `--group` and `--tag` values, with the fleet row."""
    return (
        FLEET,
        *(f"group:{check_label(g, '--group')}" for g in groups),
        *(f"tag:{check_label(t, '--tag')}" for t in tags),
    )


def read_fleet_drift(
    store: Store, cards: PublishedCards, query: FleetQuery, now: float | None = None
) -> dict[str, Any]:
    """{"since_s", "now", "rows": fleet_drift's rows, "models": versions with reports}."""
    now = time.time() if now is None else now
    devices = store.devices()
    labels = {d["id"]: Labels(d["group"] or "", tuple(d["tags"] or ())) for d in devices}
    if query.cohorts is not None:
        known = {c for lab in labels.values() for c in lab.cohorts()}
        unknown = [c for c in query.cohorts if c not in known]
        if unknown:
            kind, _, name = unknown[0].partition(":")
            raise ConfigError(
                f"--{kind} {name}: no device is in that {kind}; known: "
                f"{', '.join(sorted(known - {FLEET})) or 'none'} (`edgehub devices list`)"
            )
    reports = [
        Report(r.device, report)
        for r, report in typed(store.records_since("drift", None, now - query.since_s), DriftReport)
        if report.model is not None and query.wants(report.model)
    ]
    versions = model_versions(reports)
    found, problems = cards.lookup(versions)
    rows = fleet_drift(reports, labels, found, problems, query.cohorts)
    return {
        "since_s": query.since_s,
        "now": now,
        "rows": rows,
        "models": sorted(map(str, versions)),
    }


def check_model_known(cards: PublishedCards, store: Store, model: str) -> None:
    """A `--model` that names no published version and no device's model is a typo."""
    known = {
        f"{t['model']}@{t['model_version']}" for t in cards.published().values() if "model" in t
    } | {f"{d['model']}@{d['version']}" for d in store.devices() if d["model"]}
    if any(model in (k, k.partition("@")[0]) for k in known):
        return
    raise ConfigError(
        f"--model {model}: no such model on this hub; known: {', '.join(sorted(known)) or 'none'}"
    )
