"""Progress of a retraining's steps (app/progress.py): the plain lines exactly, then a real
`steward retrain --search` process, its output a pipe (plain lines on stdout) and its stderr a
pseudo-terminal (tqdm bars there, stdout kept for the report)."""

import io
import os
import subprocess
import threading
from pathlib import Path

import pytest
from helpers import empty_store
from server import STEWARD

from app.progress import Lines

# `steward retrain iris --search` with 2 folds: the recipe's 2 fits, then 9 more candidates
SEARCH_LINES = ["search: 0/2 fits", "search: 1/2 fits", "search: 2/2 fits"] + [
    f"search: {n}/20 fits" for n in range(4, 21, 2)
]
RETRAIN_LINES = [
    "loading feedback: started",
    "loading feedback: 0 labelled rows",
    *SEARCH_LINES,
    "fit: started",
    "fit: done",
    "evaluation: 0/2 sets",
    "evaluation: 1/2 sets (held_out)",
    "evaluation: 2/2 sets (recent skipped)",
]


def test_lines_report_a_steps_start_each_tenth_and_end() -> None:
    out = io.StringIO()
    lines = Lines(out)
    with lines.step("search", total=4, unit="fits") as step:
        for _ in range(4):
            step.advance()
        step.expect(20)  # the rest of the search, once its size is known
        for _ in range(16):
            step.advance()
    with lines.step("loading feedback", unit="labelled rows") as step:
        step.advance(150)
    with lines.step("fit"):
        pass
    with lines.step("evaluation", total=2, unit="sets") as step:
        step.advance(1, "held_out")
        step.advance(1, "recent skipped")
    assert out.getvalue().splitlines() == [
        "search: 0/4 fits",
        "search: 1/4 fits",
        "search: 2/4 fits",
        "search: 3/4 fits",
        "search: 4/4 fits",
        *(f"search: {n}/20 fits" for n in range(6, 21, 2)),  # each tenth of the new total
        "loading feedback: started",
        "loading feedback: 150 labelled rows",
        "fit: started",
        "fit: done",
        "evaluation: 0/2 sets",
        "evaluation: 1/2 sets (held_out)",
        "evaluation: 2/2 sets (recent skipped)",
    ]


def test_every_tick_reports_each_advance_and_a_failed_step_no_end() -> None:
    out = io.StringIO()
    lines = Lines(out, every_tick=True)
    with lines.step("search", total=30, unit="fits") as step:
        step.advance()
        step.advance(2)
    with pytest.raises(ValueError, match="boom"), lines.step("fit"):
        raise ValueError("boom")
    assert out.getvalue().splitlines() == [
        "search: 0/30 fits",
        "search: 1/30 fits",
        "search: 3/30 fits",
        "fit: started",  # and nothing after: the error says what happened
    ]


def test_a_reader_that_leaves_ends_the_lines_not_the_work() -> None:
    read, write = os.pipe()
    os.close(read)  # `steward retrain iris | head -1`, once head has its line
    stream = os.fdopen(write, "w")
    lines = Lines(stream)
    with lines.step("search", total=2, unit="fits") as step:
        step.advance(2)
    with lines.step("fit"):
        fitted = True  # the work after the reader left still runs
    assert fitted
    assert lines.gone
    with pytest.raises(BrokenPipeError):  # what is left in its buffer: the CLI's exit drops it
        stream.close()


def retrain_env(tmp_path: Path, models_dir: Path) -> dict[str, str]:
    empty_store(tmp_path / "data")
    return os.environ | {
        "STEWARD_MODELS_DIR": str(models_dir),
        "STEWARD_DATA_DIR": str(tmp_path / "data"),
        "STEWARD_SEARCH_FOLDS": "2",
    }


def test_a_refused_retraining_exits_1_when_its_reader_left_early(
    tmp_path: Path, models_dir: Path
) -> None:
    """`steward retrain iris --candidate | head -1`: the report has nowhere to go, and the
    exit status still says the gate refused it (no set has the rows it asks for here)."""
    env = retrain_env(tmp_path, models_dir) | {"STEWARD_GATE_MIN_ROWS": "100000"}
    process = subprocess.Popen(
        [STEWARD, "retrain", "iris", "--candidate"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "loading feedback: started\n"
    process.stdout.close()  # the reader leaves before the report
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert "iris v2 refused by the gate: no rows to compare it with production" in err
    assert "Traceback" not in err


def test_a_real_retrain_prints_its_steps_as_plain_lines_when_not_on_a_terminal(
    tmp_path: Path, models_dir: Path
) -> None:
    done = subprocess.run(
        [STEWARD, "retrain", "iris", "--search"],
        capture_output=True,
        text=True,
        env=retrain_env(tmp_path, models_dir),
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    assert lines[: len(RETRAIN_LINES)] == RETRAIN_LINES
    assert lines[len(RETRAIN_LINES)].startswith("iris: version 2 from v1's recipe on demo iris")


def test_on_a_terminal_the_steps_are_bars_on_stderr_and_stdout_keeps_the_report(
    tmp_path: Path, models_dir: Path
) -> None:
    terminal, child = os.openpty()  # never sized: Steward draws 80 columns then
    shown: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # the child closed it
                return
            if not chunk:
                return
            shown.append(chunk)

    with subprocess.Popen(
        [STEWARD, "retrain", "iris", "--search"],
        stdout=subprocess.PIPE,
        stderr=child,
        stdin=subprocess.DEVNULL,
        env=retrain_env(tmp_path, models_dir),
    ) as process:
        os.close(child)
        reader = threading.Thread(target=read)
        reader.start()
        out, _ = process.communicate(timeout=120)
        reader.join(timeout=10)
    os.close(terminal)
    assert process.returncode == 0
    report = out.decode().splitlines()
    assert report[0].startswith("iris: version 2 from v1's recipe")  # no progress lines there
    assert not any(line in report for line in RETRAIN_LINES)
    # each bar redrawn in place (\r), the final state of each step left on screen
    screen = b"".join(shown).decode()
    finals = [part.split("\r")[-1] for part in screen.split("\r\n") if part]
    assert [f.split(":")[0] for f in finals] == ["loading feedback", "search", "fit", "evaluation"]
    assert finals[0].startswith("loading feedback: 0 labelled rows [")
    assert finals[1].startswith("search: 100%|")
    assert " 20/20 [" in finals[1]
    assert "fits/s" in finals[1]
    assert finals[2].startswith("fit: [")
    assert finals[2].endswith(", done")
    assert finals[3].startswith("evaluation: 100%|")
    assert finals[3].rstrip().endswith("recent skipped]")
