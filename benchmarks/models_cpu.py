"""CPU inference speed of the registered models: torch eager vs ONNX Runtime fp32 vs ONNX Runtime int8.

For each model, tile size and batch size it reports milliseconds per tile (median over repetitions, divided by the
batch size), the fp32 ONNX-vs-torch logit difference, and how often the int8 model's arg-max class agrees with the
fp32 model's. int8 is ONNX Runtime static quantisation (QDQ, per-channel weights) calibrated on random tiles; the
models have random weights, so the agreement is a smoke figure, not the accuracy cost on real imagery.

Results are merged into ``benchmarks/results/models_cpu.json`` (keyed by model, size, batch and threads).

Usage::

    python benchmarks/models_cpu.py --models hi_resnet_small --sizes 256 512
    python benchmarks/models_cpu.py --quick          # every model, fewer repetitions, batch 1 only
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from engine.export import INPUT_NAME, OUTPUT_NAME, export_onnx
from engine.model_card import ModelCard
from engine.models import create_model, list_models

logger = logging.getLogger("models_cpu")
RESULTS = Path(__file__).resolve().parent / "results" / "models_cpu.json"
NUM_CLASSES = 7
#: Calibration tile edge: small, because the calibrator keeps every intermediate tensor of every tile in memory.
_CALIBRATION_PX = 128


class _RandomTiles(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, shape: tuple[int, ...], count: int) -> None:
        rng = np.random.default_rng(0)
        self._batches: Iterator[np.ndarray] = iter(
            [rng.standard_normal(shape).astype(np.float32) for _ in range(count)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def _median_ms(run: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _card(name: str, model: torch.nn.Module, size: int) -> ModelCard:
    return ModelCard(
        name=f"benchmark {name}",
        architecture=name,
        class_names=tuple(f"class{i}" for i in range(NUM_CLASSES)),
        class_colors=("#000000",) * NUM_CLASSES,
        tile_size_px=size,
        overlap_px=0,
        size_divisor_px=int(getattr(model, "size_divisor_px", 32)),
    )


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bench_model(name: str, sizes: list[int], batches: list[int], threads: int, repeats: int) -> list[dict[str, Any]]:
    """Benchmark one model at every size and batch; returns one row per (size, batch)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES).eval()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = Path(tmp) / "model.onnx"
        int8_path = Path(tmp) / "model.int8.onnx"
        export_error = quant_error = None
        try:
            export_onnx(model, _card(name, model, max(sizes)), fp32_path)
        except Exception as exc:  # noqa: BLE001 - report any exporter failure and keep benchmarking torch
            export_error = f"{type(exc).__name__}: {exc}"
            logger.warning("%s: ONNX export failed: %s", name, export_error)
        if export_error is None:
            try:
                prepared = Path(tmp) / "model.prep.onnx"
                quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
                quantize_static(
                    str(prepared),
                    str(int8_path),
                    _RandomTiles((1, 3, _CALIBRATION_PX, _CALIBRATION_PX), 4),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                )
            except Exception as exc:  # noqa: BLE001 - report any quantiser failure and keep benchmarking fp32
                quant_error = f"{type(exc).__name__}: {exc}"
                logger.warning("%s: int8 quantisation failed: %s", name, quant_error)
        fp32 = _session(fp32_path, threads) if export_error is None else None
        int8 = _session(int8_path, threads) if export_error is None and quant_error is None else None
        for size in sizes:
            for batch in batches:
                x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
                feed = {INPUT_NAME: x.numpy()}
                row: dict[str, Any] = {"model": name, "size_px": size, "batch": batch, "threads": threads}
                with torch.no_grad():
                    row["torch_ms_per_tile"] = _median_ms(lambda x=x: model(x), repeats) / batch
                    reference = model(x).logits.numpy()
                if fp32 is not None:
                    row["ort_fp32_ms_per_tile"] = (
                        _median_ms(lambda s=fp32, f=feed: s.run([OUTPUT_NAME], f), repeats) / batch
                    )
                    got = fp32.run([OUTPUT_NAME], feed)[0]
                    row["fp32_max_abs_diff"] = float(np.max(np.abs(got - reference)))
                if int8 is not None:
                    row["ort_int8_ms_per_tile"] = (
                        _median_ms(lambda s=int8, f=feed: s.run([OUTPUT_NAME], f), repeats) / batch
                    )
                    quantised = int8.run([OUTPUT_NAME], feed)[0]
                    row["int8_argmax_agreement"] = float(np.mean(quantised.argmax(1) == reference.argmax(1)))
                if export_error:
                    row["export_error"] = export_error
                if quant_error:
                    row["quantisation_error"] = quant_error
                logger.info("%s", json.dumps(row))
                rows.append(row)
    return rows


def _merge(rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"results": []}

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["model"], r["size_px"], r["batch"], r["threads"])

    merged = {key(r): r for r in old.get("results", [])}
    merged.update({key(r): {**r, **meta} for r in rows})
    RESULTS.write_text(json.dumps({"results": sorted(merged.values(), key=key)}, indent=2) + "\n")


def format_table(results: list[dict[str, Any]]) -> str:
    """Markdown table of saved results (ms per tile; int8 agreement in %)."""
    head = "| model | tile | batch | threads | torch ms | ORT fp32 ms | ORT int8 ms | int8 = fp32 argmax |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]

    def ms(row: dict[str, Any], key: str) -> str:
        return f"{row[key]:.0f}" if key in row else "-"

    for r in results:
        agreement = f"{100 * r['int8_argmax_agreement']:.2f} %" if "int8_argmax_agreement" in r else "-"
        lines.append(
            f"| {r['model']} | {r['size_px']}² | {r['batch']} | {r['threads']} | {ms(r, 'torch_ms_per_tile')} | "
            f"{ms(r, 'ort_fp32_ms_per_tile')} | {ms(r, 'ort_int8_ms_per_tile')} | {agreement} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list_models(), help="registry names (default: all)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[512], help="square tile edges in pixels")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4], help="batch sizes")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch and ONNX Runtime")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (median is reported)")
    parser.add_argument("--quick", action="store_true", help="2 repetitions, batch 1 only")
    parser.add_argument("--table", action="store_true", help="print the saved results as a Markdown table and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.table:
        logger.info("%s", format_table(json.loads(RESULTS.read_text())["results"]))
        return
    logging.getLogger("engine").setLevel(logging.WARNING)
    repeats, batches = (2, [1]) if args.quick else (args.repeats, args.batches)
    torch.set_num_threads(args.threads)
    meta = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
    }
    rows: list[dict[str, Any]] = []
    for name in args.models:
        rows += bench_model(name, args.sizes, batches, args.threads, repeats)
    _merge(rows, meta)
    logger.info("Wrote %s", RESULTS)


if __name__ == "__main__":
    main()
