"""Messages on the command line: each once, in this command's words (flags, not Processing parameters), no inner
library texts; and what the command line and Processing agree on (extent order, output folders, extensions)."""

from __future__ import annotations

import ast
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.cli import EXIT_BAD_INPUT, main
from tests.engine.pipeline_helpers import build_tiny_onnx, make_image, write_raster

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_onnx(tmp_path_factory.mktemp("messages_model") / "tiny.onnx")


def run_main(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    code = main(argv, stdout=io.StringIO(), stderr=err)
    return code, err.getvalue()


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=120, check=False)  # fmt: skip


def test_each_message_of_a_run_appears_once_on_stderr(tmp_path: Path, tiny_model: Path) -> None:
    raster = write_raster(tmp_path / "plain.tif", make_image(20, 20, seed=1), georeferenced=False)
    done = run_module("segment", str(raster), "-o", str(tmp_path / "c.tif"), "--model", str(tiny_model), "-q")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), done.stderr
    assert sum("no georeference" in line for line in lines) == 1  # was said twice
    assert sum("runs with onnxruntime on cpu" in line for line in lines) == 1, done.stderr
    assert sum("CUDA" in line for line in lines) <= 1  # the reason for the device, once
    assert lines[-1].startswith("wrote ")


def test_engine_messages_name_command_line_flags_not_processing_parameters(tmp_path: Path, tiny_model: Path) -> None:
    raster = write_raster(tmp_path / "in.tif", make_image(20, 20, seed=2))
    code, stderr = run_main(["segment", str(raster), "-o", str(tmp_path / "c.tif"), "--model", str(tiny_model),
                             "--bands", "1,2", "-q"])  # fmt: skip
    assert code == EXIT_BAD_INPUT
    assert "--bands 1,2,3" in stderr
    assert "BANDS" not in stderr and "in QGIS" not in stderr


def test_spelling_for_the_command_line_leaves_quoted_paths_alone() -> None:
    from engine.option_names import for_command_line

    message = "Output '/data/OUTPUT/BANDS.tif': choose DEVICE cpu, lower BATCH_SIZE or TILE_SIZE, or RESAMPLE false."
    assert for_command_line(message) == (
        "Output '/data/OUTPUT/BANDS.tif': choose --device cpu, lower --batch-size or --tile-size, or --no-resample."
    )
    assert for_command_line("MASK and VECTOR_OUTPUT") == "MASK and --vector"  # MASK has no flag: left as it is


def test_spelling_for_the_command_line_reads_apostrophes_as_apostrophes_and_defaults_as_no_flag() -> None:
    from engine.option_names import for_command_line

    # An apostrophe is not a quote: "band's ... raster's" must not hide the option between them.
    message = "'u16.tif' is out of range. Use VALUE_SCALING percentile (each band's range) for the raster's values."
    assert for_command_line(message) == (
        "'u16.tif' is out of range. Use --value-scaling percentile (each band's range) for the raster's values."
    )
    assert for_command_line("use TILE_SIZE 0 (or TILE_SIZE 24)") == "use no --tile-size (or --tile-size 24)"
    assert for_command_line("Use RESAMPLE true to resample") == "Use no --no-resample to resample"
    assert for_command_line("'TILE_SIZE 0.tif'") == "'TILE_SIZE 0.tif'"  # inside a quoted path: untouched


def _messages_in(tree: ast.AST) -> list[str]:
    """Text of the strings passed to raise ...(...) and logger calls."""
    found = []
    for node in ast.walk(tree):
        calls = []
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            calls.append(node.exc)
        is_method_call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        if is_method_call and node.func.attr in {"debug", "info", "warning", "error", "exception"}:  # type: ignore[attr-defined]
            calls.append(node)
        for call in calls:
            for arg in call.args:
                for part in ast.walk(arg):
                    if isinstance(part, ast.Constant) and isinstance(part.value, str):
                        found.append(part.value)
    return found


def test_no_engine_message_spells_a_command_line_flag() -> None:
    """QGIS shows engine messages as they are, so they name Processing parameters; only the CLI spells flags."""
    from engine.option_names import CLI_FLAGS

    flags = re.compile(r"(?<![\w-])(" + "|".join(re.escape(f) for f in [*CLI_FLAGS.values(), "--no-resample"]) + r")\b")
    offenders = []
    for path in sorted((REPO_ROOT / "engine").rglob("*.py")):
        if path.name in {"cli.py", "option_names.py"}:
            continue
        for text in _messages_in(ast.parse(path.read_text(encoding="utf-8"))):
            if flags.search(text):
                offenders.append(f"{path.relative_to(REPO_ROOT)}: {text!r}")
    assert offenders == []


def test_a_vrt_with_a_missing_source_names_the_missing_file(tmp_path: Path, tiny_model: Path) -> None:
    source = write_raster(tmp_path / "tile.tif", make_image(16, 16, seed=3))
    vrt = tmp_path / "mosaic.vrt"
    subprocess.run(["gdalbuildvrt", "-q", str(vrt), str(source)], check=True)
    source.unlink()
    code, stderr = run_main(["segment", str(vrt), "-o", str(tmp_path / "c.tif"), "--model", str(tiny_model), "-q"])
    assert code == EXIT_BAD_INPUT
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and str(source) in lines[0] and "does not exist" in lines[0], stderr
    assert "See previous exception" not in stderr


def test_help_says_which_extent_order_the_command_line_uses() -> None:
    done = run_module("segment", "--help")
    text = " ".join(done.stdout.split())
    assert "xmin,ymin,xmax,ymax" in text and "QGIS's EXTENT parameter is written xmin,xmax,ymin,ymax" in text


def test_a_missing_output_folder_is_created_as_in_qgis(tmp_path: Path, tiny_model: Path) -> None:
    raster = write_raster(tmp_path / "in.tif", make_image(16, 16, seed=4))
    out = tmp_path / "new" / "folder" / "c.tif"
    code, stderr = run_main(["segment", str(raster), "-o", str(out), "--model", str(tiny_model), "-q"])
    assert code == 0, stderr
    assert out.is_file()


def test_an_extension_gdal_would_not_write_as_geotiff_is_refused_as_in_qgis(tmp_path: Path, tiny_model: Path) -> None:
    raster = write_raster(tmp_path / "in.tif", make_image(16, 16, seed=5))
    code, stderr = run_main(["segment", str(raster), "-o", str(tmp_path / "c.png"), "--model", str(tiny_model), "-q"])
    assert code == EXIT_BAD_INPUT
    assert stderr.strip() == (
        f"error: Output '{tmp_path / 'c.png'}' must be a GeoTIFF (.tif or .tiff), the only format the engine "
        "writes; change its file extension."
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_gdal_s_messages_are_shown_only_with_verbose(tmp_path: Path, tiny_model: Path) -> None:
    raster = write_raster(tmp_path / "in.tif", np.zeros((3, 8, 8), np.uint8) + 200)
    quiet = run_module("segment", str(raster), "-o", str(tmp_path / "c.tif"), "--model", str(tiny_model), "-q")
    verbose = run_module("segment", str(raster), "-o", str(tmp_path / "d.tif"), "--model", str(tiny_model), "-q", "-v")
    assert quiet.returncode == verbose.returncode == 0
    assert "debug:" not in quiet.stderr and "debug:" in verbose.stderr
