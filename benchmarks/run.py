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


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _markdown(report: dict) -> str:
    lines = [
        f"Measured on {report['machine']} ({report['cores']} cores), "
        f"{report['date']}, with `make bench`.",
        "",
        "Seconds per training epoch (median after a warm-up epoch) and ratios. *plain*: the "
        "same network from plain Keras layers as a Keras user would train it without "
        "constraint (ReLU, max pooling, cross-entropy); *unconstrained*: the deel_lip "
        "architecture (GroupSort2, L2-norm pooling, hinge-KR loss) with plain `Conv2D`/`Dense` "
        "kernels, so that the only difference is the constraint.",
        "",
        "| model | s/epoch deel_lip | s/epoch plain | s/epoch unconstrained | "
        "ratio vs plain | ratio vs unconstrained | best-epoch ratio vs plain | "
        "best-epoch ratio vs unconstrained |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["training"]:
        seconds = row["epoch_seconds"]
        best = {name: min(values) for name, values in row["epoch_seconds_all"].items()}
        lines.append(
            f"| {row['architecture']} | {seconds['deel_lip']:.3f} | {seconds['plain']:.3f} | "
            f"{seconds['unconstrained']:.3f} | **{row['epoch_ratio']:.3f}** | "
            f"**{row['epoch_ratio_vs_unconstrained']:.3f}** | "
            f"{best['deel_lip'] / best['plain']:.3f} | "
            f"{best['deel_lip'] / best['unconstrained']:.3f} |"
        )
    if any("memory_kb" in row for row in report["training"]):
        lines += [
            "",
            "Training memory, MB (each model in a fresh process; growth of the resident set "
            "over its size before `fit`): *whole* = peak growth over the first epochs, XLA "
            "compilation included; *steady* = peak growth over epochs run after a first one "
            "(a few MB, at the noise level, hence no ratio); *process* = peak resident set "
            "size of the whole process.",
            "",
            "| model | whole deel_lip / plain / unconstrained | ratio vs plain | "
            "steady deel_lip / plain / unconstrained | "
            "process deel_lip / plain | ratio vs plain |",
            "|---|---|---|---|---|---|",
        ]
        for row in report["training"]:
            if "memory_kb" not in row:
                continue
            mem, ratio = row["memory_kb"], row["memory_ratio"]
            names = ("deel_lip", "plain", "unconstrained")
            whole = " / ".join(f"{mem[n]['training_kb'] / 1024:.0f}" for n in names)
            steady = " / ".join(f"{mem[n]['steady_state_kb'] / 1024:.0f}" for n in names)
            process = " / ".join(f"{mem[n]['peak_rss_kb'] / 1024:.0f}" for n in names[:2])
            lines.append(
                f"| {row['architecture']} | {whole} | "
                f"{_fmt(ratio['training_kb']['plain'])} | {steady} | {process} | "
                f"{_fmt(ratio['peak_rss_kb']['plain'])} |"
            )
    lines += [
        "",
        "Inference (exported model, compiled with XLA like the others) and accuracy after "
        f"{report['training'][0]['epochs']} epochs of {report['training'][0]['n_train']} images"
        " (certified accuracy of the deel_lip model at L2 radii 36/255, 0.5, 1.0):",
        "",
        "| model | inference exported / plain | exported / unconstrained | accuracy deel_lip | "
        "accuracy plain | accuracy unconstrained | certified accuracy | export max abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["training"]:
        cert = ", ".join(f"{v:.3f}" for v in row["certified_accuracy"].values())
        acc = row["accuracy"]
        lines.append(
            f"| {row['architecture']} | {row['inference_ratio_exported_vs_plain']:.3f} | "
            f"{row['inference_ratio_exported_vs_unconstrained']:.3f} | {acc['deel_lip']:.3f} | "
            f"{acc['plain']:.3f} | {acc['unconstrained']:.3f} | {cert} | "
            f"{row['export_max_abs_diff']:.1e} |"
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
        settings = dict(epochs=8, n_train=4000, n_test=1000, inference_repeats=7)
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
            memory = {
                which: measure_in_subprocess(arch, which)
                for which in ("deel_lip", "plain", "unconstrained")
            }
            row["memory_kb"] = memory
            row["memory_ratio"] = {
                key: {
                    other: memory["deel_lip"][key] / max(memory[other][key], 1)
                    for other in ("plain", "unconstrained")
                }
                for key in ("training_kb", "steady_state_kb", "peak_rss_kb")
            }
        print(
            f"[bench] {arch}: epoch ratio {row['epoch_ratio']:.3f} vs plain, "
            f"{row['epoch_ratio_vs_unconstrained']:.3f} vs unconstrained, "
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
