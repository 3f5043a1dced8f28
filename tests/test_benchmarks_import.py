"""Every benchmark script imports, and the probe model the throughput benchmark builds still exports.

The benchmarks run outside the test suite (they need quiet machines and minutes); a renamed helper they import
would otherwise surface only when someone next measures.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted(
    p.stem for p in (Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py") if p.stem != "__init__"
)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_module_imports(name: str) -> None:
    importlib.import_module(f"benchmarks.{name}")


def test_the_probe_unet_exports_with_its_card(tmp_path: Path) -> None:
    from benchmarks.synthetic import export_probe_unet
    from engine.model_file import ModelFile

    path, card, info = export_probe_unet(tmp_path, 64, 16)
    assert ModelFile.open(path).card.name == card.name == "benchmark probe U-Net"
    assert 0.5e6 < info["parameters"] < 0.7e6 and info["gflop_per_tile"] > 0
