"""What importing pulls in, each time in a fresh interpreter.

Imports point one way (main -> api -> core, cli -> core): the core knows no HTTP, and the
commands that only read the registry load neither the server nor scikit-learn and pandas, so
`steward --help` answers at once.
"""

import json
import os
import pkgutil
import subprocess
import sys
import tempfile
from collections.abc import Collection
from pathlib import Path

import pytest

import app

HTTP = ("fastapi", "starlette")
HEAVY = (*HTTP, "sklearn", "pandas")

# Runs argv[3] with every package named in argv[2] refused; writes to argv[1] each attempt to
# import one, as the chain of app modules that led to it ("app.cli -> app.errors -> fastapi").
# A refused import stops the module that asked: the next attempt shows once that one is fixed.
PROBE = """
import json, sys

refused, attempts = set(sys.argv[2].split(",")), []


class Refuse:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] not in refused:
            return None
        chain, frame = [], sys._getframe(1)
        while frame is not None:
            module = frame.f_globals.get("__name__", "")
            if module.partition(".")[0] == "app" and module not in chain:
                chain.append(module)
            frame = frame.f_back
        attempts.append(" -> ".join([*reversed(chain), name]))
        raise ModuleNotFoundError(f"{name} is refused here", name=name)


sys.meta_path.insert(0, Refuse)
try:
    exec(sys.argv[3], {"__name__": "__probe__"})
finally:
    # Loaded before this hook was in place (a .pth file at start-up), so never asked for.
    attempts += [f"{m} (loaded at start-up)" for m in sys.modules if m.partition(".")[0] in refused]
    with open(sys.argv[1], "w") as out:
        json.dump(sorted(set(attempts)), out)
"""


def imports_refused(
    code: str, packages: Collection[str], env: dict[str, str] | None = None
) -> tuple[list[str], "subprocess.CompletedProcess[str]"]:
    """Run ``code`` in a fresh interpreter that refuses to import ``packages``: every attempt
    (the chain of app modules that made it) and the process."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "attempts.json"
        done = subprocess.run(
            [sys.executable, "-c", PROBE, str(report), ",".join(packages), code],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        attempts: list[str] = json.loads(report.read_text())
    return attempts, done


def core_modules() -> list[str]:
    """Every module under app/ but the HTTP wing (app.api) and the app that wires it."""
    found = [info.name for info in pkgutil.walk_packages(app.__path__, "app.")]
    return sorted(
        name
        for name in ["app", *found]
        if name != "app.main" and name != "app.api" and not name.startswith("app.api.")
    )


def test_the_probe_sees_an_import_it_refuses() -> None:
    """The check below can fail: the HTTP wing does import FastAPI, and the probe says how."""
    attempts, done = imports_refused("import app.main", HTTP)
    assert done.returncode != 0
    assert any(
        a.startswith("app.main -> ") and a.split(" -> ")[-1].partition(".")[0] in HTTP
        for a in attempts
    ), attempts


def test_the_core_imports_no_http() -> None:
    modules = core_modules()
    assert {"app.settings", "app.store.log", "app.prediction"} <= set(modules)  # discovered
    code = (
        "import importlib\n"
        f"for name in {modules!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as exc:\n"
        f"        if exc.name.partition('.')[0] not in {HTTP!r}:\n"
        "            raise\n"
    )
    attempts, done = imports_refused(code, HTTP)
    assert done.returncode == 0, done.stderr
    assert attempts == [], "core modules that import HTTP packages:\n" + "\n".join(attempts)


def _cli(*argv: str) -> str:
    return f"from app.cli import main\nraise SystemExit(main({list(argv)!r}))"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("STEWARD_")}


@pytest.mark.parametrize(
    ("argv", "output"),
    [
        (["--help"], "usage: steward "),
        (["--version"], f"steward {app.__version__}\n"),
    ],
)
def test_help_and_version_import_neither_the_server_nor_scikit_learn(
    argv: list[str], output: str
) -> None:
    attempts, done = imports_refused(_cli(*argv), HEAVY, _env())
    assert attempts == []
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith(output)


def test_models_lists_a_real_registry_without_the_server_or_scikit_learn(
    demo_models: Path,
) -> None:
    attempts, done = imports_refused(
        _cli("--models-dir", str(demo_models), "models"), HEAVY, _env()
    )
    assert attempts == []
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines()[1:] == [
        "breast-cancer  1         production=1",
        "diabetes       1         production=1",
        "iris           1         production=1",
    ]


@pytest.mark.parametrize(
    ("argv", "code", "output"),
    [
        (["promote", "iris", "1"], 0, "iris: production is already version 1\n"),
        (["versions", "iris"], 0, "VERSION  CREATED"),
        (["rollback", "iris"], 1, ""),  # nothing to roll back to: the error, still light
        (["traffic", "iris", "none"], 0, "iris: traffic none"),  # already none: nothing written
        (["traffic", "iris", "shadow"], 1, ""),  # no candidate: the error, still light
        (["status", "--url", "http://127.0.0.1:9"], 1, ""),  # nothing listens on port 9
    ],
)
def test_alias_commands_import_neither_the_server_nor_scikit_learn(
    demo_models: Path, argv: list[str], code: int, output: str
) -> None:
    attempts, done = imports_refused(_cli("--models-dir", str(demo_models), *argv), HEAVY, _env())
    assert attempts == []
    assert done.returncode == code, done.stderr
    assert done.stdout.startswith(output)
    if code == 0:
        assert done.stderr == ""
    else:
        assert done.stderr.startswith("steward: error: "), done.stderr
