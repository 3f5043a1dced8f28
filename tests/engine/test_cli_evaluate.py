"""`python -m engine evaluate PRED REF [-o REPORT] [--ignore N]`: reports, stdout JSON and one-line errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.cli import EXIT_BAD_INPUT, main

REPO_ROOT = Path(__file__).resolve().parents[2]
PRED = np.array([[0, 1, 1], [2, 255, 2]], dtype=np.uint8)
REF = np.array([[0, 1, 0], [2, 2, 5]], dtype=np.uint8)
# Hand count: (1, 1) is prediction nodata; with --ignore 5, (1, 2) is not scored either. Rows = reference.
CONFUSION = [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        check=False, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120,
    )  # fmt: skip


@pytest.fixture
def pair(make_geotiff) -> tuple[str, str]:
    return str(make_geotiff(PRED, name="pred.tif")), str(make_geotiff(REF, name="ref.tif"))


def test_evaluate_in_a_subprocess_writes_the_json_report(tmp_path: Path, pair: tuple[str, str]) -> None:
    report = tmp_path / "report.json"
    done = run_module("evaluate", *pair, "-o", str(report), "--ignore", "5", "-q")
    assert done.returncode == 0, done.stderr
    content = json.loads(report.read_text(encoding="utf-8"))
    assert content["confusion_matrix"] == CONFUSION
    assert content["oa"] == pytest.approx(3 / 4)
    assert list(content["per_class"]) == ["0", "1", "2"]
    assert done.stdout == ""
    assert "wrote" in done.stderr and "OA 0.7500" in done.stderr and "Traceback" not in done.stderr


def test_without_output_the_json_report_goes_to_stdout(tmp_path: Path, pair: tuple[str, str]) -> None:
    code, stdout, stderr = run_main(["evaluate", *pair, "--ignore", "5", "-q"])
    assert code == 0, stderr
    assert json.loads(stdout)["confusion_matrix"] == CONFUSION
    # --json prints the same JSON as the file holds
    report = tmp_path / "r.json"
    code, again, _ = run_main(["evaluate", *pair, "--ignore", "5", "-q", "-o", str(report), "--json"])
    assert code == 0 and again == stdout == report.read_text(encoding="utf-8") + "\n"


def test_csv_report_by_suffix(tmp_path: Path, pair: tuple[str, str]) -> None:
    code, _, stderr = run_main(["evaluate", *pair, "-o", str(tmp_path / "r.csv"), "-q"])
    assert code == 0, stderr
    assert (tmp_path / "r.csv").read_text(encoding="utf-8").startswith("class_index,class_name,iou,")


def test_missing_file_exits_2_with_one_line_in_a_subprocess(tmp_path: Path, pair: tuple[str, str]) -> None:
    report = tmp_path / "r.json"
    done = run_module("evaluate", pair[0], str(tmp_path / "nope.tif"), "-o", str(report))
    assert done.returncode == EXIT_BAD_INPUT
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Reference raster" in lines[0] and "does not exist" in lines[0]
    assert "Traceback" not in done.stderr
    assert not report.exists()


def test_mismatched_sizes_exit_2_with_the_fix(tmp_path: Path, make_geotiff, pair: tuple[str, str]) -> None:
    other = make_geotiff(np.zeros((4, 4), np.uint8), name="other.tif")
    code, stdout, stderr = run_main(["evaluate", pair[0], str(other), "-o", str(tmp_path / "r.json"), "-q"])
    assert code == EXIT_BAD_INPUT and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Prediction is 3 x 2 pixels") and "warp" in lines[0]
    assert not (tmp_path / "r.json").exists()


def test_negative_ignore_value_is_refused_by_the_parser(
    pair: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run_main(["evaluate", *pair, "--ignore", "-1"])
    assert code == EXIT_BAD_INPUT
    stderr = capsys.readouterr().err  # argparse writes to sys.stderr itself
    assert len(stderr.strip().splitlines()) == 1 and "--ignore" in stderr
