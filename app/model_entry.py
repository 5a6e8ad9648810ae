"""One model of the registry: its state at one moment (``ModelState``) and the entry that
holds it (``ModelEntry``), with what a model answers on its own: the version number a request
names, metadata of any version, what /models shows, and whether its traffic policy applies now.

The Registry (app/registry.py) creates the entries and alone replaces a state, under its lock;
everyone else takes one state whole and asks it each question.

Each model carries its traffic policy (app/aliases.py ``TrafficPolicy``), read from its
aliases file; ``ModelState.challenger`` is the candidate version the policy sends requests to,
while it applies.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from app.aliases import TrafficPolicy
from app.artifacts import ModelMetadata, list_versions, read_metadata
from app.errors import ArtifactError, UnknownVersion
from app.features import same_inputs
from app.loading import LoadedModel, Refusal
from app.schemas import LoadedVersion, ModelDetail, ModelSummary, TrafficStatus


@dataclass(frozen=True)
class ModelState:
    """One model at one moment: versions on disk, aliases, loaded versions, refusals, and the
    traffic policy between production and candidate.

    Never changed in place: the registry replaces an entry's state whole, so whoever reads one
    state sees an alias and the version it points at from the same moment.
    """

    versions: tuple[int, ...]
    aliases: Mapping[str, int] = field(default_factory=dict)
    loaded: Mapping[int, LoadedModel] = field(default_factory=dict)
    refusals: Mapping[int | None, Refusal] = field(default_factory=dict)  # None: aliases file
    traffic: TrafficPolicy = field(default_factory=TrafficPolicy)

    @property
    def production(self) -> LoadedModel | None:
        """The production version when it is loaded: what a request names by default."""
        number = self.aliases.get("production")
        return None if number is None else self.loaded.get(number)

    @property
    def refusal(self) -> Refusal | None:
        """Why no production version serves, when a refusal is the reason: the production
        version's, or the aliases file's."""
        if None in self.refusals:
            return self.refusals[None]
        number = self.aliases.get("production")
        return None if number is None else self.refusals.get(number)

    @cached_property
    def challenger(self) -> LoadedModel | None:
        """The candidate version the traffic policy sends requests to, while the policy
        applies; None: production answers everything. Worked out once per state: the request
        path asks it of every request."""
        return None if self.traffic_inactive() else self.loaded.get(self.traffic.candidate or 0)

    def traffic_inactive(self) -> str | None:
        """Why a shadow or canary policy does not apply now; None when it applies, or when the
        mode is none and there is nothing to apply."""
        traffic = self.traffic
        number = traffic.candidate
        if traffic.mode == "none" or number is None:
            return None
        if traffic.percent == 0:
            return "0% of requests go to the candidate"
        if self.aliases.get("candidate") != number:
            return f"set for candidate v{number}, which the candidate alias has left"
        if number == self.aliases.get("production"):
            return "candidate is the production version"
        if number in self.refusals:
            return f"candidate v{number} is refused"
        if number not in self.versions:
            return f"candidate v{number} is not on disk"
        model = self.loaded.get(number)
        if model is None:
            return "candidate not loaded"
        production = self.production
        if (
            traffic.mode == "canary"
            and production is not None
            and not same_inputs(model.metadata.features, production.metadata.features)
        ):
            return (
                f"candidate v{number} reads other inputs than production: a canary would refuse "
                "requests production accepts"
            )
        return None

    def aliases_of(self, version: int) -> list[str]:
        """The aliases pointing at ``version``, sorted."""
        return sorted(alias for alias, number in self.aliases.items() if number == version)


class ModelEntry:
    """One model of the registry. ``state`` is read from any thread without a lock: take it
    once per question. Only the Registry replaces it, under the registry's lock."""

    def __init__(self, root: Path, name: str, versions: tuple[int, ...] | None = None) -> None:
        """``versions``: the version numbers on disk, when the caller has read them (or
        knows there are none to read); otherwise read here, raising OSError when the model's
        folder cannot be listed."""
        self.name = name
        if versions is None:
            versions = tuple(list_versions(root, name))
        self.state = ModelState(versions=versions)
        self._root = root
        self._metadata: dict[int, ModelMetadata] = {}

    def number(self, version: str | None, state: ModelState | None = None) -> int:
        """The version number a request names: an alias, a number, or (None) production;
        looked up in ``state`` when the caller already took one."""
        state = state or self.state
        ref = version or "production"
        if ref in state.aliases:
            return state.aliases[ref]
        if ref.isascii() and ref.isdigit():  # "²" and "٣" are digits to str.isdigit
            return int(ref)
        if version is None:
            if None in state.refusals:  # the aliases file was refused: say so, not "none set"
                raise state.refusals[None].unavailable()
            raise UnknownVersion(f"model {self.name!r} has no production version", model=self.name)
        raise UnknownVersion(
            f"model {self.name!r} has no such version or alias",
            [
                {
                    "field": "version",
                    "message": "a version number or one of: " + ", ".join(state.aliases),
                }
            ],
            model=self.name,
        )

    def cached(self, version: str | None = None) -> LoadedModel | None:
        """The loaded version a request names, if in memory (no disk access).

        Raises UnknownVersion / ModelUnavailable; None means "load it" (Registry.resolve).
        """
        state = self.state
        number = self.number(version, state)
        loaded = state.loaded.get(number)
        if loaded is not None:
            return loaded
        refusal = state.refusals.get(number)
        if refusal is not None:
            raise refusal.unavailable()
        return None

    def metadata(self, version: int) -> ModelMetadata:
        """Metadata of any version, served or not (feedback for older predictions)."""
        loaded = self.state.loaded.get(version)
        if loaded is not None:
            return loaded.metadata
        if version not in self._metadata:
            self._metadata[version] = read_metadata(self._root, self.name, version)
        return self._metadata[version]

    def summary(self) -> ModelSummary:
        """What GET /models shows of this model."""
        state = self.state
        production, refusal = state.production, state.refusal
        return ModelSummary(
            name=self.name,
            task=production.metadata.task if production else None,
            versions=list(state.versions),
            aliases=dict(state.aliases),
            serving=production.version if production else None,
            refused=refusal.message if refusal else None,
            traffic=state.traffic.mode,
        )

    def traffic_status(self) -> TrafficStatus:
        """The traffic policy, and whether it applies now (or why not)."""
        state = self.state
        inactive = state.traffic_inactive()
        return TrafficStatus(
            **dict(state.traffic),
            active=state.challenger is not None,
            inactive_reason=inactive,
        )

    def detail(self) -> ModelDetail:
        """What GET /models/{model} shows: aliases, loaded versions, refusals, and the metadata
        of every version (one whose metadata is unreadable is left out here; GET /models lists
        every version number)."""
        state = self.state
        versions = []
        for number in state.versions:
            try:
                versions.append(self.metadata(number))
            except ArtifactError:
                continue  # named under refusals once someone asks for it
        return ModelDetail(
            name=self.name,
            aliases=dict(state.aliases),
            loaded=[
                LoadedVersion(
                    version=number,
                    aliases=state.aliases_of(number),
                    sklearn_mismatch=model.sklearn_mismatch,
                    runtime=model.runtime,
                    fallback=None if model.fallback is None else vars(model.fallback),
                )
                for number, model in sorted(state.loaded.items())
            ],
            refusals=[
                {"version": r.version, "reason": r.reason, "message": r.message}
                for r in state.refusals.values()
            ],
            versions=versions,
            traffic=self.traffic_status(),
        )
