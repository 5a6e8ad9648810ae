"""A real `steward serve` scraped every second by a real Prometheus that evaluates the bundled
alert rules: the end-to-end tests' monitoring stack."""

import shutil
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

import yaml
from promql import ALERTS
from server import STEWARD, Server, free_port, serving

PROMETHEUS = shutil.which("prometheus")
INSTALL_HINT = "Debian's prometheus package is missing: run `make test`"


@contextmanager
def scraped(
    work: Path, env: Mapping[str, str], *, ready: str = "/readyz"
) -> Iterator[tuple[Server, Server]]:
    """Steward on a free port (its log ``work/steward.log``) and Prometheus scraping it (its
    config, data and log in ``work``); both stopped on exit."""
    assert PROMETHEUS, INSTALL_HINT
    steward_port, prometheus_port = free_port(), free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "steward", "static_configs": [{"targets": [f"127.0.0.1:{steward_port}"]}]}
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    argv = [
        PROMETHEUS,
        f"--config.file={work / 'prometheus.yml'}",
        f"--storage.tsdb.path={work / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prometheus_port}",
    ]
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
        prometheus = running.enter_context(
            serving(
                argv, port=prometheus_port, env=env, log=work / "prometheus.log", ready="/-/ready"
            )
        )
        yield steward, prometheus
