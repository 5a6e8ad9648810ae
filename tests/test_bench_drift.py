"""bench/drift.py measures what it says: its append cases go through the window as the server's
requests do, the in-range one counting no issue and the out-of-range one every feature's, and
the rows it sends are served. (The timings themselves are the bench's, never asserted here.)"""

import json
from pathlib import Path

import pytest
from drift import BATCH_ROWS, MODELS, append_case, outside_row, request_body
from fastapi.testclient import TestClient


@pytest.mark.parametrize("name", MODELS)
def test_append_case_in_range_counts_no_issue(models_dir: Path, name: str) -> None:
    case = append_case(models_dir, name, BATCH_ROWS)
    case.append()
    snapshot = case.window.snapshot(0.0)
    assert len(snapshot) == BATCH_ROWS
    assert snapshot.numbers is not None  # every demo feature is a number: kept as floats
    assert snapshot.numbers.tolist() == [list(row) for row in case.rows]
    confidences = [max(proba.values()) if proba else None for _, proba in case.outputs]
    assert [None if c != c else c for c in snapshot.confidences.tolist()] == confidences
    assert case.window.counts == [
        {"missing": 0, "out_of_range": 0, "unseen_category": 0} for _ in case.rows[0]
    ]


@pytest.mark.parametrize("name", MODELS)
def test_append_case_outside_counts_every_feature(models_dir: Path, name: str) -> None:
    case = append_case(models_dir, name, BATCH_ROWS, outside=True)
    case.append()
    case.append()
    assert case.window.counts == [
        {"missing": 0, "out_of_range": 2 * BATCH_ROWS, "unseen_category": 0} for _ in case.rows[0]
    ]


def test_the_bench_rows_are_served_and_counted(client: TestClient, models_dir: Path) -> None:
    """The 64-row body wrk sends and the out-of-range row are both answered (the request model
    accepts values a span outside the training range); only the latter counts issues."""
    name = "breast-cancer"
    answer = client.post(f"/predict/{name}", content=request_body(models_dir, name, BATCH_ROWS))
    assert answer.status_code == 200
    assert len(answer.json()["predictions"]) == BATCH_ROWS
    outside = json.dumps({"instances": [outside_row(models_dir, name)]})
    assert client.post(f"/predict/{name}", content=outside).status_code == 200
    report = client.get(f"/models/{name}/drift").json()
    assert len(report["features"]) == 30
    assert [f["quality"] for f in report["features"]] == [
        {"missing": 0, "out_of_range": 1, "unseen_category": 0} for _ in report["features"]
    ]
