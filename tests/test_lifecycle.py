"""Promote, roll back, describe: the alias history on disk, hostile files, two writers at once."""

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import wait_until
from sklearn.linear_model import LinearRegression

from app import lifecycle
from app.artifacts import (
    ALIASES,
    METADATA,
    ModelMetadata,
    process_actor,
    read_alias_file,
    read_aliases,
    save_version,
)
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


# Promotes ``count`` times, production to version (i + offset) % 3 + 1, once a go file exists;
# prints the ``by`` of each promote that changed something, in order.
WORKER = """
import json, sys, time
from pathlib import Path
from app.lifecycle import promote
root, worker = Path(sys.argv[1]), sys.argv[2]
(root / f"ready-{worker}").touch()
while not (root / "go").exists():
    time.sleep(0.001)
made = []
i = 0
while not (root / "stop").exists():  # until the test has seen both of us at work
    tag = f"{worker}-{i}"
    if promote(root, "adder", (i + int(worker)) % 3 + 1, by=tag).change is not None:
        made.append(tag)
    i += 1
print(json.dumps(made))
"""


def test_two_processes_promoting_at_once_lose_no_change(root: Path) -> None:
    """Both write until each has landed many changes while the other was writing too."""
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(root), str(worker)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for worker in (0, 1)
    ]
    deadline = time.monotonic() + 60
    while not all((root / f"ready-{w}").exists() for w in (0, 1)):
        assert time.monotonic() < deadline, "the workers did not start"
        assert all(w.poll() is None for w in workers), workers[0].communicate()
        time.sleep(0.01)
    (root / "go").touch()

    def overlapped() -> bool:
        tags = [c.by for c in read_alias_file(root, "adder").history[1:]]
        switches = sum(1 for a, b in itertools.pairwise(tags) if a[0] != b[0])
        return switches >= 20 and min(sum(t[0] == w for t in tags) for w in "01") >= 50

    overlapping = wait_until(overlapped, seconds=60, interval=0.05)
    (root / "stop").touch()
    made = []
    for process in workers:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        made.append(json.loads(out))
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
