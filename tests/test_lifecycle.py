"""Promote, roll back, describe: the alias history on disk, hostile files, two writers at once."""

import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import wait_until
from sklearn.linear_model import LinearRegression

from app import lifecycle
from app.aliases import ALIASES, process_actor, read_alias_file, read_aliases
from app.artifacts import METADATA, ModelMetadata, save_version
from app.errors import (
    AliasesUnreadable,
    ArtifactError,
    LifecycleConflict,
    UnknownModel,
    UnknownVersion,
    ValidationFailed,
)
from app.features import FeatureSpec


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A registry with model ``adder`` at versions 1, 2, 3; production is 1 (set at save)."""
    x = np.arange(20, dtype=float).reshape(10, 2)
    estimator = LinearRegression().fit(x, x.sum(axis=1))
    draft = ModelMetadata(
        name="adder",
        task="regression",
        features=[FeatureSpec(name="a", dtype="float"), FeatureSpec(name="b", dtype="float")],
        metrics={"mae": 0.5},
    )
    for _ in range(3):
        save_version(tmp_path, draft, estimator)
    return tmp_path


def moves(root: Path) -> list[tuple[str, int | None, int, str]]:
    return [(c.alias, c.from_, c.to, c.action) for c in read_alias_file(root, "adder").history]


def test_promote_appends_who_when_from_and_to(root: Path) -> None:
    before = time.time()
    state = lifecycle.promote(root, "adder", 2)
    assert state.aliases == {"production": 2}
    assert state.change is not None
    assert (state.change.alias, state.change.from_, state.change.to) == ("production", 1, 2)
    assert state.change.by == process_actor()
    assert "@" in state.change.by
    assert before - 1 <= state.change.at.timestamp() <= time.time() + 1
    assert state.change.at.utcoffset() is not None  # aware, in UTC
    state = lifecycle.promote(root, "adder", 3, "candidate", by="admin-api")
    assert state.aliases == {"production": 2, "candidate": 3}
    assert state.history == read_alias_file(root, "adder").history
    assert moves(root) == [
        ("production", None, 1, "promote"),  # save_version's first production
        ("production", 1, 2, "promote"),
        ("candidate", None, 3, "promote"),
    ]
    assert state.history[-1].by == "admin-api"
    # The file is the documented shape, with "from" (not the Python name) as the key.
    raw = json.loads((root / "adder" / ALIASES).read_text())
    assert set(raw) == {"aliases", "history", "traffic"}
    assert set(raw["history"][1]) == {"alias", "from", "to", "at", "by", "action"}
    assert raw["history"][1]["at"].endswith("Z")


def test_promote_to_where_it_points_writes_nothing(root: Path) -> None:
    path = root / "adder" / ALIASES
    before = path.read_bytes()
    state = lifecycle.promote(root, "adder", 1)
    assert state.change is None
    assert state.aliases == {"production": 1}
    assert path.read_bytes() == before


def test_a_version_judged_against_a_production_that_moved_is_not_aliased(root: Path) -> None:
    """Two retrainings at once: each judged against v1; the second finds production moved."""
    lifecycle.promote(root, "adder", 2, judged_against=1)
    before = moves(root)
    with pytest.raises(LifecycleConflict) as refused:
        lifecycle.promote(root, "adder", 3, "candidate", judged_against=1)
    assert refused.value.message == (
        "adder: production is version 2 now, not version 1 that version 3 was judged against: "
        "it is kept, candidate not moved"
    )
    assert moves(root) == before
    assert lifecycle.promote(root, "adder", 3, judged_against=2).aliases == {"production": 3}


def test_repeated_rollbacks_keep_going_back(root: Path) -> None:
    lifecycle.promote(root, "adder", 2)
    lifecycle.promote(root, "adder", 3)
    lifecycle.promote(root, "adder", 1, "candidate")  # candidate moves do not count
    assert lifecycle.rollback(root, "adder").aliases["production"] == 2
    state = lifecycle.rollback(root, "adder", by="admin-api")
    assert state.aliases == {"production": 1, "candidate": 1}
    assert state.change is not None
    assert (state.change.from_, state.change.to, state.change.action) == (2, 1, "rollback")
    assert state.change.by == "admin-api"
    with pytest.raises(LifecycleConflict, match="no earlier production version"):
        lifecycle.rollback(root, "adder")
    # A promote after roll-backs is what the next roll-back undoes.
    lifecycle.promote(root, "adder", 3)
    assert lifecycle.rollback(root, "adder").aliases["production"] == 1
    assert [m for m in moves(root) if m[0] == "production"] == [
        ("production", None, 1, "promote"),
        ("production", 1, 2, "promote"),
        ("production", 2, 3, "promote"),
        ("production", 3, 2, "rollback"),
        ("production", 2, 1, "rollback"),
        ("production", 1, 3, "promote"),
        ("production", 3, 1, "rollback"),
    ]


def test_the_first_format_is_read_and_then_extended(root: Path) -> None:
    path = root / "adder" / ALIASES
    path.write_text('{"production": 2, "candidate": 3}\n')
    assert read_aliases(root, "adder") == {"production": 2, "candidate": 3}
    assert read_alias_file(root, "adder").history == []
    with pytest.raises(LifecycleConflict, match="no earlier production version"):
        lifecycle.rollback(root, "adder")  # no history yet
    assert path.read_text() == '{"production": 2, "candidate": 3}\n'
    lifecycle.promote(root, "adder", 1)
    assert moves(root) == [("production", 2, 1, "promote")]
    assert lifecycle.rollback(root, "adder").aliases == {"production": 2, "candidate": 3}


def test_unknown_models_versions_and_aliases_are_refused(root: Path) -> None:
    path = root / "adder" / ALIASES
    before = path.read_bytes()
    with pytest.raises(UnknownModel, match="no model 'nope' in "):
        lifecycle.promote(root, "nope", 1)
    with pytest.raises(UnknownModel, match="no model 'nope'"):
        lifecycle.rollback(root, "nope")
    with pytest.raises(UnknownModel, match="no model 'nope'"):
        lifecycle.describe(root, "nope")
    for hostile in ("../adder", "ADDER", "x" * 100_000, "", "adder\n"):
        with pytest.raises(UnknownModel) as caught:
            lifecycle.promote(root, hostile, 1)
        assert hostile not in caught.value.message or hostile == ""  # never echoed
    for version in (4, 0, -1, 2**63):
        with pytest.raises(UnknownVersion, match=f"adder has no version {version} "):
            lifecycle.promote(root, "adder", version)
    with pytest.raises(ValidationFailed, match="alias must be one of production, candidate"):
        lifecycle.promote(root, "adder", 2, "staging")
    for by in ("", "x" * 201, "ana\nroot@vm"):
        with pytest.raises(
            ValidationFailed,
            match=r"^by \(who made the change\) must be 1-200 printable characters$",
        ):
            lifecycle.promote(root, "adder", 2, by=by)
        with pytest.raises(
            ValidationFailed,
            match=r"^by \(who made the change\) must be 1-200 printable characters$",
        ):
            lifecycle.rollback(root, "adder", by=by)
    assert path.read_bytes() == before
    assert not (root / "nope").exists()


def test_a_version_whose_metadata_is_unreadable_is_not_promoted(root: Path) -> None:
    (root / "adder" / "2" / METADATA).write_text("{not json")
    with pytest.raises(
        LifecycleConflict, match=r"(?s)adder v2: unreadable metadata.json.*not promoted"
    ):
        lifecycle.promote(root, "adder", 2)
    assert read_aliases(root, "adder") == {"production": 1}
    # Nor rolled back to: production 1 -> 3, then version 1 is broken.
    lifecycle.promote(root, "adder", 3)
    (root / "adder" / "1" / METADATA).unlink()
    with pytest.raises(LifecycleConflict, match="cannot roll adder back to version 1"):
        lifecycle.rollback(root, "adder")
    assert read_aliases(root, "adder") == {"production": 3}
    versions = lifecycle.describe(root, "adder").versions
    assert [(v.version, v.unreadable is None) for v in versions] == [
        (1, False),
        (2, False),
        (3, True),
    ]
    assert "metadata.json" in str(versions[0].unreadable)


CORRUPT = {
    "not-json": "{production: 2",
    "empty": "",
    "a-list": "[1, 2]",
    "a-string-version": '{"production": "2"}',
    "a-bool-version": '{"production": true}',
    "history-entry-missing-fields": '{"aliases": {"production": 1}, "history": [{"alias": "x"}]}',
    "unknown-key": '{"aliases": {"production": 1}, "history": [], "extra": 1}',
    "history-not-a-list": '{"aliases": {"production": 1}, "history": {}}',
    "byte-order-mark": '\ufeff{"production": 1}',
}


@pytest.mark.parametrize("case", CORRUPT)
def test_a_corrupt_aliases_file_is_refused_and_left_as_it_is(root: Path, case: str) -> None:
    path = root / "adder" / ALIASES
    path.write_text(CORRUPT[case])
    before = path.read_bytes()
    for attempt in (
        lambda: read_aliases(root, "adder"),
        lambda: lifecycle.promote(root, "adder", 2),
        lambda: lifecycle.rollback(root, "adder"),
        lambda: lifecycle.describe(root, "adder"),
    ):
        with pytest.raises(AliasesUnreadable) as caught:
            attempt()
        assert isinstance(caught.value, ArtifactError)  # the registry refuses it as one
        message = caught.value.message
        assert str(path) in message
        assert "left as it is" in message
        assert "fix it by hand" in message
        assert caught.value.status_code == 409
    assert path.read_bytes() == before


# A racing worker's start: its job name in ``job``, ready when the test's go file exists.
WORKER_START = """
import json, sys, time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from app.lifecycle import promote, set_traffic
root, job = Path(sys.argv[1]), sys.argv[2]
(root / f"ready-{job}").touch()
while not (root / "go").exists():
    time.sleep(0.001)
made = []
i = 0
"""

# Promotes production to version (i + job) % 3 + 1 until the stop file exists; prints the
# ``by`` of each promote that changed something, in order.
WORKER = (
    WORKER_START
    + """
while not (root / "stop").exists():  # until the test has seen both of us at work
    tag = f"{job}-{i}"
    if promote(root, "adder", (i + int(job)) % 3 + 1, by=tag).change is not None:
        made.append(tag)
    i += 1
print(json.dumps(made))
"""
)


def race(
    root: Path, script: str, jobs: Sequence[str], overlapped: Callable[[], bool], interval: float
) -> tuple[bool, dict[str, Any]]:
    """Run ``script`` once per job, all released at once, until ``overlapped`` holds (or a
    minute passes); whether it held, and what each job printed (JSON), by job."""
    workers = {
        job: subprocess.Popen(
            [sys.executable, "-c", script, str(root), job],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for job in jobs
    }
    deadline = time.monotonic() + 60
    while not all((root / f"ready-{job}").exists() for job in jobs):
        assert time.monotonic() < deadline, "the workers did not start"
        assert all(w.poll() is None for w in workers.values()), workers[jobs[0]].communicate()
        time.sleep(0.01)
    (root / "go").touch()
    overlapping = wait_until(overlapped, seconds=60, interval=interval)
    (root / "stop").touch()
    made = {}
    for job, process in workers.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        made[job] = json.loads(out)
    return overlapping, made


def test_two_processes_promoting_at_once_lose_no_change(root: Path) -> None:
    """Both write until each has landed many changes while the other was writing too."""

    def overlapped() -> bool:
        tags = [c.by for c in read_alias_file(root, "adder").history[1:]]
        switches = sum(1 for a, b in itertools.pairwise(tags) if a[0] != b[0])
        return switches >= 20 and min(sum(t[0] == w for t in tags) for w in "01") >= 50

    overlapping, by_job = race(root, WORKER, ("0", "1"), overlapped, interval=0.05)
    made = [by_job["0"], by_job["1"]]
    history = read_alias_file(root, "adder").history
    tags = [c.by for c in history[1:]]  # after save_version's first production
    assert sorted(tags) == sorted(made[0] + made[1])  # every change, none lost
    for worker in (0, 1):
        assert [t for t in tags if t.startswith(f"{worker}-")] == made[worker]  # in order
    # Both changed production (a promote finding it already there is a no-op, often when the
    # two fall into step: how many depends on scheduling).
    assert min(len(made[0]), len(made[1])) > 0
    # Each change starts where the one before it ended: no writer read a stale file.
    for before, after in itertools.pairwise(history):
        assert after.from_ == before.to
    assert read_aliases(root, "adder") == {"production": history[-1].to}
    assert overlapping, "the two writers never overlapped: the test proved nothing"


def test_describe_lists_versions_metrics_aliases_and_history(root: Path) -> None:
    lifecycle.promote(root, "adder", 3, "candidate")
    report = lifecycle.describe(root, "adder")
    assert report.model == "adder"
    assert [(v.version, v.aliases, v.task, v.metrics) for v in report.versions] == [
        (1, ["production"], "regression", {"mae": 0.5}),
        (2, [], "regression", {"mae": 0.5}),
        (3, ["candidate"], "regression", {"mae": 0.5}),
    ]
    assert all(v.created_at is not None for v in report.versions)
    assert [(c.alias, c.to) for c in report.history] == [("production", 1), ("candidate", 3)]


# --- The traffic policy ------------------------------------------------------------------------

HOW = "steward promote adder VERSION --alias candidate"


def test_shadow_and_canary_need_a_candidate_other_than_production(root: Path) -> None:
    path = root / "adder" / ALIASES
    before = path.read_bytes()
    for mode in ("shadow", "canary"):
        with pytest.raises(LifecycleConflict) as caught:
            lifecycle.set_traffic(root, "adder", mode, 10)
        assert caught.value.status_code == 409
        assert f"adder: {mode} needs a candidate version, and adder has none" in str(caught.value)
        assert HOW in caught.value.message
    lifecycle.promote(root, "adder", 1, "candidate")  # the production version
    before = path.read_bytes()
    with pytest.raises(LifecycleConflict, match="both are version 1") as caught:
        lifecycle.set_traffic(root, "adder", "shadow")
    assert HOW in caught.value.message
    assert path.read_bytes() == before
    assert lifecycle.set_traffic(root, "adder", "none").traffic.mode == "none"  # always allowed


def test_set_traffic_writes_the_policy_beside_the_aliases_and_keeps_the_history(
    root: Path,
) -> None:
    lifecycle.promote(root, "adder", 2, "candidate")
    history = read_alias_file(root, "adder").history
    before = time.time()
    state = lifecycle.set_traffic(root, "adder", "shadow")
    assert (state.traffic.mode, state.traffic.percent) == ("shadow", 100.0)  # the default
    assert state.traffic.by == process_actor()
    assert state.traffic.at is not None
    assert before - 1 <= state.traffic.at.timestamp() <= time.time() + 1
    assert (state.aliases, state.change) == ({"production": 1, "candidate": 2}, None)
    on_disk = read_alias_file(root, "adder")
    assert on_disk.traffic == state.traffic
    assert on_disk.history == history == state.history  # the policy is not an alias move
    raw = json.loads((root / "adder" / ALIASES).read_text())
    assert set(raw["traffic"]) == {"mode", "percent", "candidate", "at", "by"}
    assert raw["traffic"]["at"].endswith("Z")

    state = lifecycle.set_traffic(root, "adder", "canary", 12.5, by="admin-api")
    assert (state.traffic.mode, state.traffic.percent, state.traffic.by) == (
        "canary",
        12.5,
        "admin-api",
    )
    assert lifecycle.set_traffic(root, "adder", "canary", 0).traffic.percent == 0.0
    assert lifecycle.set_traffic(root, "adder", "shadow", 7).traffic.percent == 7.0
    none = lifecycle.set_traffic(root, "adder", "none")
    assert (none.traffic.mode, none.traffic.percent) == ("none", 0.0)
    assert lifecycle.set_traffic(root, "adder", "none", 0).traffic == none.traffic
    assert read_alias_file(root, "adder").history == history
    assert lifecycle.describe(root, "adder").traffic == none.traffic


def test_the_same_policy_again_writes_nothing(root: Path) -> None:
    lifecycle.promote(root, "adder", 2, "candidate")
    first = lifecycle.set_traffic(root, "adder", "canary", 30, by="ana@laptop")
    path = root / "adder" / ALIASES
    before = path.read_bytes()
    again = lifecycle.set_traffic(root, "adder", "canary", 30.0, by="bob@laptop")
    assert again.traffic == first.traffic  # who set it first, and when
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("mode", "percent", "field", "message"),
    [
        ("canary", None, "percent", "percent is required for canary"),
        ("canary", -1, "percent", "percent must be a number from 0 to 100"),
        ("canary", 101, "percent", "percent must be a number from 0 to 100"),
        ("canary", 100.0000001, "percent", "percent must be a number from 0 to 100"),
        ("shadow", float("inf"), "percent", "percent must be a number from 0 to 100"),
        ("shadow", float("-inf"), "percent", "percent must be a number from 0 to 100"),
        ("canary", float("nan"), "percent", "percent must be a number from 0 to 100"),
        ("canary", 1.7976931348623157e308, "percent", "percent must be a number from 0 to 100"),
        ("canary", True, "percent", "percent must be a number from 0 to 100"),
        ("canary", "50", "percent", "percent must be a number from 0 to 100"),
        ("none", 5, "percent", "percent must be 0, or omitted, when mode is none"),
        ("staging", None, "mode", "mode must be one of none, shadow, canary"),
        ("SHADOW", 10, "mode", "mode must be one of none, shadow, canary"),
        ("", None, "mode", "mode must be one of none, shadow, canary"),
        ("x" * 100_000, None, "mode", "mode must be one of none, shadow, canary"),
    ],
)
def test_a_malformed_policy_is_422_naming_the_field(
    root: Path, mode: str, percent: object, field: str, message: str
) -> None:
    lifecycle.promote(root, "adder", 2, "candidate")
    path = root / "adder" / ALIASES
    before = path.read_bytes()
    with pytest.raises(ValidationFailed) as caught:
        lifecycle.set_traffic(root, "adder", mode, percent)  # type: ignore[arg-type]
    assert caught.value.status_code == 422
    assert caught.value.message.startswith(message)
    assert [d["field"] for d in caught.value.details] == [field]
    assert ("x" * 20) not in caught.value.message  # never echoed
    assert path.read_bytes() == before


def test_set_traffic_refuses_unknown_models_and_bad_actors(root: Path) -> None:
    lifecycle.promote(root, "adder", 2, "candidate")
    path = root / "adder" / ALIASES
    before = path.read_bytes()
    with pytest.raises(UnknownModel, match="no model 'nope' in "):
        lifecycle.set_traffic(root, "nope", "shadow")
    for hostile in ("../adder", "ADDER", "x" * 100_000):
        with pytest.raises(UnknownModel) as caught:
            lifecycle.set_traffic(root, hostile, "shadow")
        assert hostile not in caught.value.message
    with pytest.raises(ValidationFailed, match=r"^by \(who made the change\)"):
        lifecycle.set_traffic(root, "adder", "shadow", by="ana\nroot@vm")
    assert path.read_bytes() == before
    assert not (root / "nope").exists()


def test_the_first_format_and_a_file_without_traffic_read_as_none(root: Path) -> None:
    path = root / "adder" / ALIASES
    path.write_text('{"production": 1, "candidate": 2}\n')
    assert read_alias_file(root, "adder").traffic.mode == "none"
    path.write_text('{"aliases": {"production": 1, "candidate": 2}, "history": []}\n')
    assert read_alias_file(root, "adder").traffic == read_alias_file(root, "adder").traffic
    assert (
        read_alias_file(root, "adder").traffic.mode,
        read_alias_file(root, "adder").traffic.percent,
    ) == ("none", 0.0)
    path.write_text('{"production": 1, "candidate": 2}\n')
    state = lifecycle.set_traffic(root, "adder", "canary", 5)  # the new format, aliases kept
    assert state.aliases == {"production": 1, "candidate": 2}
    assert set(json.loads(path.read_text())) == {"aliases", "history", "traffic"}
    assert read_alias_file(root, "adder").traffic.percent == 5.0


def test_moving_the_candidate_sets_traffic_back_to_none(root: Path) -> None:
    """A policy is set for one candidate version: a new candidate gets no traffic it was not
    given by name (a canary of 50 % must not land on an untested version)."""
    lifecycle.promote(root, "adder", 2, "candidate")
    lifecycle.set_traffic(root, "adder", "canary", 50)
    state = lifecycle.promote(root, "adder", 3, "candidate", by="ana@laptop")
    assert (state.traffic.mode, state.traffic.candidate, state.traffic.by) == (
        "none", None, "ana@laptop"
    )  # fmt: skip
    assert read_alias_file(root, "adder").traffic == state.traffic
    assert lifecycle.set_traffic(root, "adder", "shadow").traffic.candidate == 3


def test_a_hand_written_policy_without_its_candidate_is_refused(root: Path) -> None:
    path = root / "adder" / ALIASES
    for traffic in (
        {"mode": "canary", "percent": 10},  # for which candidate?
        {"mode": "none", "percent": 10},
        {"mode": "none", "percent": 0, "candidate": 2},
    ):
        path.write_text(
            json.dumps({"aliases": {"production": 1, "candidate": 2}, "traffic": traffic})
        )
        with pytest.raises(AliasesUnreadable, match="traffic"):
            read_alias_file(root, "adder")


def test_promoting_production_to_the_candidate_ends_the_experiment(root: Path) -> None:
    lifecycle.promote(root, "adder", 2, "candidate")
    assert lifecycle.set_traffic(root, "adder", "canary", 20).traffic.candidate == 2
    # Production moves that leave the candidate where it was keep the policy.
    assert lifecycle.promote(root, "adder", 3).traffic.mode == "canary"
    assert lifecycle.rollback(root, "adder").traffic.mode == "canary"  # back to 1
    # Production onto the candidate's version: the same write sets traffic back to none.
    state = lifecycle.promote(root, "adder", 2, by="admin-api")
    assert state.aliases == {"production": 2, "candidate": 2}
    assert (state.traffic.mode, state.traffic.percent, state.traffic.by) == (
        "none",
        0.0,
        "admin-api",
    )
    assert state.change is not None
    assert state.traffic.at == state.change.at
    assert read_alias_file(root, "adder").traffic == state.traffic
    # A rollback onto the candidate's version ends it too.
    lifecycle.promote(root, "adder", 1, "candidate")
    lifecycle.set_traffic(root, "adder", "shadow")
    assert lifecycle.rollback(root, "adder").traffic.mode == "none"  # production 2 -> 1


CORRUPT_TRAFFIC = {
    "traffic-percent-out-of-range": '"traffic": {"mode": "canary", "percent": 150}',
    "traffic-percent-a-string": '"traffic": {"mode": "canary", "percent": "50"}',
    "traffic-percent-a-bool": '"traffic": {"mode": "canary", "percent": true}',
    "traffic-unknown-mode": '"traffic": {"mode": "blue-green", "percent": 5}',
    "traffic-unknown-key": '"traffic": {"mode": "none", "weight": 5}',
    "traffic-not-an-object": '"traffic": "shadow"',
}


@pytest.mark.parametrize("case", [*CORRUPT, *CORRUPT_TRAFFIC])
def test_set_traffic_refuses_a_corrupt_aliases_file_and_leaves_it(root: Path, case: str) -> None:
    path = root / "adder" / ALIASES
    if case in CORRUPT:
        path.write_text(CORRUPT[case])
    else:
        path.write_text(
            f'{{"aliases": {{"production": 1, "candidate": 2}}, {CORRUPT_TRAFFIC[case]}}}'
        )
    before = path.read_bytes()
    for mode in ("none", "shadow"):
        with pytest.raises(AliasesUnreadable) as caught:
            lifecycle.set_traffic(root, "adder", mode)
        assert "left as it is" in caught.value.message
    if case in CORRUPT_TRAFFIC:
        with pytest.raises(AliasesUnreadable, match="traffic"):
            lifecycle.promote(root, "adder", 2)
    assert path.read_bytes() == before


# Sets traffic (canary, percent i % 100) or promotes production (between 1 and 2; the candidate
# is 3), once a go file exists; prints each change made, in order.
TRAFFIC_WORKER = (
    WORKER_START
    + """
while not (root / "stop").exists():
    i += 1
    if job == "traffic":
        state = set_traffic(root, "adder", "canary", i % 100 + 1, by=f"t-{i}")
        if state.traffic.by == f"t-{i}":
            made.append(i % 100 + 1)
    elif promote(root, "adder", i % 2 + 1, by=f"p-{i}").change is not None:
        made.append(i % 2 + 1)
print(json.dumps(made))
"""
)


def test_two_processes_setting_traffic_and_promoting_at_once_lose_nothing(root: Path) -> None:
    """One sets the policy, one promotes production, both through the aliases lock: every
    promote is in the history, and the policy is the last one set."""
    lifecycle.promote(root, "adder", 3, "candidate")
    seen: list[tuple[int, str | None]] = []

    def overlapped() -> bool:
        aliases = read_alias_file(root, "adder")
        seen.append((len(aliases.history), aliases.traffic.by))
        both = sum(
            1
            for (h0, t0), (h1, t1) in itertools.pairwise(seen)
            if h1 > h0 and t1 != t0  # each wrote between two looks
        )
        return both >= 10 and len(aliases.history) >= 100

    overlapping, made = race(root, TRAFFIC_WORKER, ("traffic", "promote"), overlapped, 0.02)
    final = read_alias_file(root, "adder")
    promotes = [c.to for c in final.history if c.by.startswith("p-")]
    assert promotes == made["promote"]  # every promote, in order, none lost
    for before, after in itertools.pairwise(final.history[2:]):  # after the candidate's
        assert after.from_ == before.to
    assert final.traffic.mode == "canary"
    assert final.traffic.percent == made["traffic"][-1]  # the last one set, not overwritten
    assert final.aliases["candidate"] == 3
    assert overlapping, "the two writers never overlapped: the test proved nothing"
