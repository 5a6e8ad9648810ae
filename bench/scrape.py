"""What the benchmark reads from a running Steward (its /metrics) and from a stopped one (the
rows in its SQLite prediction log), and a sampler that keeps a reading's peak during a run."""

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from load import get
from prometheus_client.parser import text_string_to_metric_families


class Watch:
    """Samples ``read`` every ``interval`` seconds in a thread; keeps the peak."""

    def __init__(
        self,
        read: Callable[[], float],
        interval: float = 0.5,
        on_sample: Callable[[float], None] | None = None,
    ) -> None:
        self.peak = 0.0
        self._read = read
        self._on_sample = on_sample
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while True:
            value = self._read()
            self.peak = max(self.peak, value)
            if self._on_sample is not None:
                self._on_sample(value)
            if self._stopped.wait(interval):
                return

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def samples(url: str, name: str) -> list[Any]:
    text = get(f"{url}/metrics").decode()
    return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def gauge(url: str, name: str) -> float:
    return float(sum(s.value for s in samples(url, name)))


def counter(url: str, name: str) -> int:
    return int(sum(s.value for s in samples(url, name)))


def rows_written(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "steward.db") as conn:
        count: int = conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
        return count
