"""The loop closed, end to end, through a real `steward serve` and the real CLI in another
process, with a real Prometheus evaluating the bundled alert rules:

v1 serves -> its inputs shift (sepals 3 cm wider) and the clients' ground truth shows it failing
-> `steward retrain iris --candidate` -> the gate passes -> shadow shows v1 and v2 on the same
labels -> promote v2 -> later labels make v2 look worse than v1 was -> the automatic rollback
puts v1 back, says why in the log and the alias history, counts it, and its alert fires.
"""

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pandas as pd
import pytest
from helpers import ADMIN_AUTH, ADMIN_TOKEN, wait_until
from server import STEWARD
from stack import scraped
from test_retraining import ROTATED, score, shifted_iris  # score: rounded to 6 decimals

from app.aliases import read_alias_file
from app.artifacts import read_metadata

HOLDOUT_SECONDS = 4.0  # the recent window the gate judges on, kept out of training
MIN_LABELS = 40  # the automatic rollback judges v2 on at least this many labels
MARGIN = 0.05
RULES = Path(__file__).parents[1] / "prometheus" / "alerts.yml"


@dataclass
class Loop:
    steward: str
    prometheus: str
    env: dict[str, str]
    models: Path
    log: Path
    http: httpx2.Client

    def predict_and_label(self, frame: pd.DataFrame, labels: pd.Series) -> list[int]:
        """Every row predicted (10 per request), then its label posted; the versions that
        answered."""
        versions, items = [], []
        for start in range(0, len(frame), 10):
            chunk = frame.iloc[start : start + 10]
            rows = [{str(k): v for k, v in row.items()} for row in chunk.to_dict("records")]
            answer = self.http.post("/predict/iris", json={"instances": rows})
            assert answer.status_code == 200, answer.text
            versions.append(answer.json()["version"])
            ids = [p["id"] for p in answer.json()["predictions"]]
            truth = labels.iloc[start : start + 10]
            items += [
                {"prediction_id": i, "ground_truth": y} for i, y in zip(ids, truth, strict=True)
            ]
        labelled = self.http.post("/feedback", json={"items": items})
        assert labelled.json()["accepted"] == len(frame), labelled.text
        return versions

    def serving(self) -> int:
        (iris,) = [m for m in self.http.get("/models").json() if m["name"] == "iris"]
        version: int = iris["serving"]
        return version

    def alerts(self) -> list[dict[str, Any]]:
        response = httpx2.get(f"{self.prometheus}/api/v1/alerts")
        alerts: list[dict[str, Any]] = response.json()["data"]["alerts"]
        return alerts


@pytest.fixture
def loop(tmp_path: Path, models_dir: Path) -> Iterator[Loop]:
    env = os.environ | {
        "STEWARD_MODELS_DIR": str(models_dir),
        "STEWARD_DATA_DIR": str(tmp_path / "data"),
        "STEWARD_ADMIN_TOKEN": ADMIN_TOKEN,
        "STEWARD_RELOAD_INTERVAL_SECONDS": "0.3",
        "STEWARD_RETRAIN_HOLDOUT_SECONDS": str(HOLDOUT_SECONDS),
        "STEWARD_AUTO_ROLLBACK": "true",
        "STEWARD_AUTO_ROLLBACK_MIN_LABELS": str(MIN_LABELS),
        "STEWARD_AUTO_ROLLBACK_MARGIN": str(MARGIN),
        "STEWARD_AUTO_ROLLBACK_INTERVAL_SECONDS": "0.5",
    }
    with scraped(tmp_path, env) as (steward, prometheus):
        with httpx2.Client(base_url=steward.url, timeout=30) as http:
            yield Loop(steward.url, prometheus.url, env, models_dir, tmp_path / "steward.log", http)
        code = steward.stop(timeout=30)
        assert code in (0, -15), (tmp_path / "steward.log").read_text()


def test_retrain_gate_shadow_promote_then_roll_back_by_itself(loop: Loop) -> None:
    frame, truth = shifted_iris(loop.models)
    even, odd = frame.iloc[::2], frame.iloc[1::2]
    v1 = read_metadata(loop.models, "iris", 1)

    # v1 serves the shifted traffic; the clients' ground truth shows it failing there.
    assert set(loop.predict_and_label(even, truth.iloc[::2])) == {1}
    time.sleep(1.2 * HOLDOUT_SECONDS)  # what follows is the recent window, kept out of training
    assert set(loop.predict_and_label(odd, truth.iloc[1::2])) == {1}
    v1_live = score(loop.models, v1, frame, truth)
    assert v1_live < 0.5

    # `steward retrain`, in its own process: the gate passes, v2 becomes the candidate.
    done = subprocess.run(
        [STEWARD, "retrain", "iris", "--candidate"], env=loop.env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    v2 = read_metadata(loop.models, "iris", 2)
    assert v2.gate is not None
    assert v2.gate.passed, v2.gate
    recent = {s.name: s for s in v2.gate.sets}["recent"]
    assert recent.rows == len(odd)
    assert recent.new is not None
    assert recent.production is not None
    assert recent.new > recent.production + 0.3
    assert "candidate -> version 2" in done.stdout
    assert wait_until(lambda: loop.http.get("/models/iris").json()["aliases"].get("candidate") == 2)

    # Shadow: v1 answers, v2 predicts the same rows; both scored on the same labels.
    shadow = loop.http.put(
        "/admin/models/iris/traffic", json={"mode": "shadow"}, headers=ADMIN_AUTH
    )
    assert shadow.status_code == 200, shadow.text
    assert wait_until(lambda: loop.http.get("/models/iris").json()["traffic"]["active"])
    assert set(loop.predict_and_label(frame, truth)) == {1}
    v2_live = score(loop.models, v2, frame, truth)

    def paired() -> list[dict[str, Any]]:
        pairs: list[dict[str, Any]] = loop.http.get("/models/iris").json()["paired"]
        return pairs

    assert wait_until(lambda: bool(paired()) and paired()[0]["labelled"] == len(frame))
    (pair,) = paired()
    assert (pair["champion"], pair["challenger"]) == (1, 2)
    assert pair["champion_accuracy"] == pytest.approx(v1_live, abs=1e-6)
    assert pair["challenger_accuracy"] == pytest.approx(v2_live, abs=1e-6)
    assert v2_live > v1_live + 0.3

    # Prometheus has scraped the rollback counter at 0: an increase it can see (on a fast
    # machine the loop gets here before Prometheus's first scrape).
    def counter_scraped() -> bool:
        query = 'steward_rollbacks_total{model="iris",reason="accuracy_drop"}'
        response = httpx2.get(f"{loop.prometheus}/api/v1/query", params={"query": query})
        return bool(response.json()["data"]["result"])

    assert wait_until(counter_scraped, seconds=30)

    # Promote v2 over the admin API.
    promoted = loop.http.post("/admin/models/iris/promote", json={"version": 2}, headers=ADMIN_AUTH)
    assert promoted.status_code == 200, promoted.text
    assert loop.serving() == 2
    assert loop.http.get("/models/iris").json()["auto_rollback"]["state"] == "waiting"

    # Later labels say v2 is wrong (every species rotated): worse than v1's live figure by far
    # more than the margin, over more than MIN_LABELS labels. Steward rolls back by itself.
    rotated = truth.map(ROTATED)
    assert set(loop.predict_and_label(frame, rotated)) == {2}
    v2_later = score(loop.models, v2, frame, rotated)
    assert v2_later < v1_live - MARGIN
    assert wait_until(lambda: loop.serving() == 1, seconds=30), loop.log.read_text()

    history = read_alias_file(loop.models, "iris").history
    assert (history[-1].alias, history[-1].to, history[-1].action) == ("production", 1, "rollback")
    assert history[-1].by == "auto-rollback"
    (line,) = [x for x in loop.log.read_text().splitlines() if "auto-rollback iris:" in x]
    assert "WARNING" in line, line
    assert "production v2 -> v1 (accuracy_drop): worse by more than the margin (0.05)" in line
    assert f"v2 accuracy {v2_later:.4f} over {len(frame)} labels since its promote" in line
    assert loop.http.get("/models/iris").json()["auto_rollback"]["state"] == "idle"
    metrics = loop.http.get("/metrics").text
    assert 'steward_rollbacks_total{model="iris",reason="accuracy_drop"} 1.0' in metrics
    assert 'steward_rollbacks_total{model="iris",reason="manual"} 0.0' in metrics

    # The bundled alert rule fires on it, in a real Prometheus evaluating alerts.yml.
    def firing() -> list[dict[str, Any]]:
        return [a for a in loop.alerts() if a["labels"]["alertname"] == "StewardAutomaticRollback"]

    assert wait_until(lambda: bool(firing()), seconds=60), json.dumps(loop.alerts())
    (alert,) = firing()
    assert alert["labels"]["model"] == "iris"
    assert "operations.md#stewardautomaticrollback" in alert["annotations"]["runbook_url"]
