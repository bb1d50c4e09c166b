"""`make bench`: measure deel_lip against plain Keras and write the results.

Writes ``benchmarks/results/latest.json`` and ``benchmarks/results/latest.md`` (included by
the docs page "Benchmarks"). ``--quick`` runs tiny settings (used by the test suite).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RESULTS = Path(__file__).resolve().parent / "results"


def _markdown(report: dict) -> str:
    lines = [
        f"Measured on {report['machine']} ({report['cores']} cores), "
        f"{report['date']}, with `make bench`.",
        "",
        "| model | s/epoch deel_lip | s/epoch plain | ratio | peak train memory ratio | "
        "inference exported / plain | accuracy deel_lip | accuracy plain | "
        "certified acc. (36/255, 0.5, 1.0) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["training"]:
        cert = ", ".join(f"{v:.3f}" for v in row["certified_accuracy"].values())
        memory = row.get("memory_ratio")
        memory_text = f"{memory:.2f}" if memory is not None else "n/a"
        lines.append(
            f"| {row['architecture']} | {row['epoch_seconds']['deel_lip']:.3f} | "
            f"{row['epoch_seconds']['plain']:.3f} | **{row['epoch_ratio']:.3f}** | "
            f"{memory_text} | {row['inference_ratio_exported_vs_plain']:.3f} | "
            f"{row['accuracy']['deel_lip']:.3f} | {row['accuracy']['plain']:.3f} | {cert} |"
        )
    lines += [
        "",
        "Normalisation step (forward + backward, XLA), median milliseconds:",
        "",
        "| kernel matrix | deel_lip (Gram-form Bjorck) | full-matrix Bjorck | speed-up |",
        "|---|---|---|---|",
    ]
    for row in report["normalization"]:
        rows, cols = row["shape"]
        lines.append(
            f"| {rows}x{cols} | {row['ours_ms']:.3f} | {row['full_matrix_ms']:.3f} | "
            f"{row['speedup']:.1f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny settings, for tests")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--architectures", nargs="+", default=["small", "wide"])
    args = parser.parse_args(argv)

    from benchmarks.memory import measure_in_subprocess
    from benchmarks.normalization import SHAPES, run_normalization_benchmark
    from benchmarks.training import run_training_benchmark

    if args.quick:
        settings = dict(epochs=2, n_train=256, n_test=128, inference_repeats=1)
        shapes, repeats = SHAPES[:2], 2
    else:
        settings = dict(epochs=6, n_train=4000, n_test=1000, inference_repeats=7)
        shapes, repeats = SHAPES, 15
    report = {
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "quick": args.quick,
        "training": [],
    }
    for arch in args.architectures:
        print(f"[bench] training {arch} ...", flush=True)
        row = run_training_benchmark(arch, **settings)
        if not args.quick:
            memory = {which: measure_in_subprocess(arch, which) for which in ("deel_lip", "plain")}
            row["memory_kb"] = memory
            row["memory_ratio"] = memory["deel_lip"]["training_kb"] / max(
                memory["plain"]["training_kb"], 1
            )
        print(
            f"[bench] {arch}: epoch ratio {row['epoch_ratio']:.3f}, "
            f"inference exported/plain {row['inference_ratio_exported_vs_plain']:.3f}",
            flush=True,
        )
        report["training"].append(row)
    print("[bench] normalisation micro-benchmark ...", flush=True)
    report["normalization"] = run_normalization_benchmark(shapes, repeats=repeats)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "latest.json").write_text(json.dumps(report, indent=2))
    (args.output / "latest.md").write_text(_markdown(report))
    print(_markdown(report))
    return report


if __name__ == "__main__":
    main()
