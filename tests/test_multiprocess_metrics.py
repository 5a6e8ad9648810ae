"""app/multiprocess_metrics.py in a process of its own with PROMETHEUS_MULTIPROC_DIR set (as a
worker is started): prometheus-client picks where values live when it is imported, so this
cannot run in the test process."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.parser import text_string_to_metric_families

from app.multiprocess_metrics import active, exposition, remove_series

assert active()
registry = CollectorRegistry()
accuracy = Gauge(
    "steward_estimated_accuracy", "", ["model", "version"], registry=registry,
    multiprocess_mode="livemin",
)
accuracy.labels("iris", "1").set(0.9)
remove_series(accuracy, "iris", "1")  # published, then gone: its gone reading
remove_series(accuracy, "diabetes", "1")  # never published (a regressor): nothing appears
samples = [
    (s.labels["model"], s.value)
    for family in text_string_to_metric_families(exposition(registry).decode())
    for s in family.samples
]
print(samples)
"""


def test_a_series_goes_to_its_gone_reading_and_one_never_published_stays_absent(
    tmp_path: Path,
) -> None:
    env = os.environ | {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[('iris', 2.0)]"
