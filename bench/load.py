"""Load generation with wrk, and plain HTTP calls to the server under load.

wrk runs one thread per run (the machine has two cores; the server gets the other one) and
reports through a Lua ``done`` hook as one JSON line, so nothing parses wrk's prose.
"""

import json
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The request row of the iris runs: a setosa.
IRIS = {"sepal_length_cm": 5.1, "sepal_width_cm": 3.5, "petal_length_cm": 1.4,
        "petal_width_cm": 0.2}  # fmt: skip

DONE_HOOK = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status + e.connect + e.read + e.write + e.timeout))
end
"""

POST_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = {body}
"""

# Feedback: each request labels the next id of a file of logged prediction ids.
FEEDBACK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local ids = {{}}
for line in io.lines({ids_file}) do ids[#ids + 1] = line end
local next_id = 0
request = function()
  next_id = next_id % #ids + 1
  local body = '{{"prediction_id": "' .. ids[next_id] .. '", "ground_truth": {truth}}}'
  return wrk.format(nil, nil, nil, body)
end
"""


@dataclass(frozen=True)
class Result:
    """One wrk run: completed requests per second, latency quantiles, failed requests."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def lua_post(body: str, folder: Path, name: str) -> Path:
    script = folder / f"{name}.lua"
    script.write_text(POST_SCRIPT.format(body=lua_string(body)) + DONE_HOOK)
    return script


def lua_feedback(ids_file: Path, ground_truth: Any, folder: Path) -> Path:
    script = folder / "feedback.lua"
    truth = json.dumps(ground_truth).replace("'", "\\'")
    script.write_text(
        FEEDBACK_SCRIPT.format(ids_file=lua_string(str(ids_file)), truth=truth) + DONE_HOOK
    )
    return script


def lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def wrk(
    url: str, script: Path, connections: int, seconds: float, cpus: str | None = None
) -> Result:
    """Drive ``url`` with ``connections`` keep-alive connections for ``seconds``; on the CPUs
    ``cpus`` (taskset's list, e.g. "1") when given."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{round(seconds)}s", "--timeout", "10s"]
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    done = subprocess.run(
        [*argv, "-s", str(script), url], capture_output=True, text=True, check=True
    )
    line = done.stdout.strip().splitlines()[-1]
    raw = json.loads(line)
    return Result(
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        errors=raw["errors"],
    )


def get(url: str, headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        body: bytes = response.read()
        return body


def post_json(url: str, payload: Any, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"content-type": "application/json", **(headers or {})},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())
