"""A real `steward serve` (or several: ``prometheus``) scraped every second by a real Prometheus
that evaluates the bundled alert rules: the end-to-end tests' monitoring stack."""

import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx2
import yaml
from promql import ALERTS
from server import STEWARD, Server, free_port, serving

PROMETHEUS = shutil.which("prometheus")
INSTALL_HINT = "Debian's prometheus package is missing: run `make test`"


def instant_query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    """The result of an instant PromQL query on the Prometheus at ``prometheus``."""
    response = httpx2.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert body["status"] == "success", f"{expr}\n{body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@contextmanager
def prometheus(work: Path, targets: Sequence[str], env: Mapping[str, str]) -> Iterator[Server]:
    """Prometheus on a free port scraping every ``targets`` address (``host:port``) each second
    as job ``steward`` (each its own ``instance``) and evaluating the bundled alert rules; its
    config, data and log in ``work``. Stopped on exit."""
    assert PROMETHEUS, INSTALL_HINT
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "steward", "static_configs": [{"targets": [*targets]}]}],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    argv = [
        PROMETHEUS,
        f"--config.file={work / 'prometheus.yml'}",
        f"--storage.tsdb.path={work / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with serving(argv, port=port, env=env, log=work / "prometheus.log", ready="/-/ready") as up:
        yield up


@contextmanager
def scraped(
    work: Path, env: Mapping[str, str], *, ready: str = "/readyz"
) -> Iterator[tuple[Server, Server]]:
    """Steward on a free port (its log ``work/steward.log``) and Prometheus scraping it (its
    config, data and log in ``work``); both stopped on exit."""
    assert PROMETHEUS, INSTALL_HINT
    steward_port = free_port()
    with ExitStack() as running:
        steward = running.enter_context(
            serving(
                [STEWARD, "serve", "--port", str(steward_port)],
                port=steward_port,
                env=env,
                log=work / "steward.log",
                ready=ready,
            )
        )
        scraper = running.enter_context(prometheus(work, [f"127.0.0.1:{steward_port}"], env))
        yield steward, scraper
