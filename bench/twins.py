"""The model call alone, on scikit-learn and on each version's compiled twin, in process.

For each demo model (and a random forest and a histogram gradient boosting registered beside
them, the tree ensembles Treelite serves): ``app.prediction.infer`` for 1 row and for 64
rows, the version loaded with its twin and without (STEWARD_TWINS off), interleaved over
``ROUNDS`` rounds; the median of each round's mean per call. Run by ``bench/run.py
--twins-only`` (and ``make bench``), or alone: ``python bench/twins.py``.
"""

import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import joblib
from sklearn import datasets
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

from app.features import Row
from app.loading import LoadedModel, load_version
from app.prediction import infer
from app.registration import register_estimator
from app.training import train_demo

ROUNDS = 5
CALL_SECONDS = 0.3  # per round, per case
ROW_COUNTS = (1, 64)


def models(root: Path) -> list[str]:
    """The demo models, plus two tree ensembles on the breast-cancer data, registered."""
    names = [m.name for m in train_demo(root)]
    frame, labels = datasets.load_breast_cancer(return_X_y=True, as_frame=True)
    frame.columns = [f"f{i}" for i in range(frame.shape[1])]
    sample = root.parent / "sample.csv"
    frame.assign(label=labels).to_csv(sample, index=False)
    for name, estimator in (
        ("forest", RandomForestClassifier(n_estimators=100, random_state=0)),
        ("boosted", HistGradientBoostingClassifier(random_state=0)),
    ):
        artifact = root.parent / f"{name}.joblib"
        joblib.dump(estimator.fit(frame.to_numpy(), labels.to_numpy()), artifact)
        register_estimator(root, artifact, name, sample, target="label")
        names.append(name)
    return names


def rows_of(model: LoadedModel, count: int) -> list[Row]:
    """``count`` typical rows: the training medians, as a client sends them."""
    row = model.contract.typical_row(model.metadata.medians())
    return [row] * count


def per_call_us(call: Callable[[], object]) -> float:
    call()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < CALL_SECONDS:
        call()
        calls += 1
    return elapsed / calls * 1e6


def measure(root: Path, name: str) -> dict[tuple[bool, int], float]:
    loaded = {
        twins: load_version(
            root,
            name,
            1,
            max_instances=1000,
            input_range_multiple=10.0,
            target_range_multiple=10.0,
            twins=twins,
        )
        for twins in (True, False)
    }
    results: dict[tuple[bool, int], list[float]] = {}
    for _ in range(ROUNDS):
        for count in ROW_COUNTS:
            for twins, model in loaded.items():
                rows = rows_of(model, count)
                results.setdefault((twins, count), []).append(
                    per_call_us(partial(infer, model, rows))
                )
    medians = {k: statistics.median(v) for k, v in results.items()}
    print_rows(name, loaded[True].runtime, medians)
    return medians


def print_rows(name: str, runtime: str, medians: dict[tuple[bool, int], float]) -> None:
    for count in ROW_COUNTS:
        ours, theirs = medians[(True, count)], medians[(False, count)]
        print(
            f"| {name} | {runtime} | {count} | {theirs:,.0f} | {ours:,.0f} | {theirs / ours:.1f}x |"
        )


def twins_cost(names: Sequence[str] | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="steward-twins-") as folder:
        root = Path(folder) / "models"
        every = models(root)
        print(
            f"infer() per call, in process, median of {ROUNDS} interleaved rounds "
            "(scikit-learn vs the compiled twin):"
        )
        print("| model | twin | rows | scikit-learn µs | twin µs | speed-up |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name in names or every:
            measure(root, name)


if __name__ == "__main__":
    twins_cost(sys.argv[1:] or None)
