"""`make bench`: measure deel_lip against plain Keras and write the results.

``make bench`` writes ``benchmarks/results/scratch.{json,md}`` (git-ignored); ``make
bench-save`` (``--save``) writes the committed ``benchmarks/results/latest.{json,md}``,
included by the docs page "Benchmarks". ``--quick`` runs tiny settings (used by the test
suite). The device (CPU or GPU) is detected and reported; nothing else changes on a GPU
machine (Keras's ``jit_compile="auto"`` then resolves to XLA for the default builds).
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


def _fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _device() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU ({details.get('device_name', gpus[0].name)}) x{len(gpus)}"
    return "CPU only"


def _markdown(report: dict) -> str:
    lines = [
        f"Measured on {report['machine']} ({report['cores']} cores, device: {report['device']}), "
        f"{report['date']}, with `make bench`.",
        "",
        "Seconds per training epoch (median after a warm-up epoch). *default*: "
        "`compile()` left at Keras's defaults (`jit_compile='auto'`: Keras resolves it to "
        "no XLA on a CPU-only machine, for deel_lip models too: their frequency bound and sort "
        "kernels then run as XLA islands); *xla*: `jit_compile=True`. "
        "Ratios are over the **fastest** plain Keras "
        "baseline (ReLU CNN with average or max pooling, defaults or XLA).",
        "",
        "| model | deel_lip default | deel_lip xla | unconstrained default | plain avg "
        "default / xla | plain max default / xla | fastest baseline | **ratio default** | "
        "**ratio xla** | ratio vs unconstrained |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["training"]:
        sec = row["epoch_seconds"]

        def s(name, sec=sec):
            return _fmt(sec.get(name), 3)

        lines.append(
            f"| {row['architecture']} | {s('deel_lip')} | {s('deel_lip_xla')} | "
            f"{s('unconstrained')} | {s('plain_avg')} / {s('plain_avg_xla')} | "
            f"{s('plain_max')} / {s('plain_max_xla')} | {row['fastest_baseline']} | "
            f"**{_fmt(row['ratio_default'], 3)}** | **{_fmt(row.get('ratio_xla'), 3)}** | "
            f"{_fmt(row['ratio_vs_unconstrained'], 3)} |"
        )
    if any("memory_kb" in row for row in report["training"]):
        lines += [
            "",
            "Memory, MB: growth of the resident set over the first epoch (tracing and "
            "compilation included) and over later epochs (*steady*), each build in a fresh "
            "process, Keras defaults.",
            "",
            "| model | first epoch deel_lip / unconstrained / plain avg | "
            "**ratio vs unconstrained** | steady deel_lip / unconstrained / plain avg |",
            "|---|---|---|---|",
        ]
        for row in report["training"]:
            if "memory_kb" not in row:
                continue
            mem = row["memory_kb"]
            names = ("deel_lip", "unconstrained", "plain_avg")
            first = " / ".join(f"{mem[n]['first_epoch_kb'] / 1024:.0f}" for n in names)
            steady = " / ".join(f"{mem[n]['steady_state_kb'] / 1024:.0f}" for n in names)
            lines.append(
                f"| {row['architecture']} | {first} | "
                f"**{_fmt(row['memory_ratio_first_epoch'], 2)}** | {steady} |"
            )
    lines += [
        "",
        "Inference (Keras defaults, train + test images) and accuracy after "
        f"{report['training'][0]['epochs']} epochs of {report['training'][0]['n_train']} images"
        " (certified accuracy of the deel_lip model at L2 radii 36/255, 0.5, 1.0):",
        "",
        "| model | exported / plain avg | deel_lip / exported | accuracy deel_lip | "
        "accuracy plain avg | accuracy unconstrained | certified accuracy | "
        "export max abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["training"]:
        cert = ", ".join(f"{v:.3f}" for v in row["certified_accuracy"].values())
        acc = row["accuracy"]
        lines.append(
            f"| {row['architecture']} | {row['inference_ratio_exported_vs_plain']:.3f} | "
            f"{row['inference_ratio_deel_lip_vs_exported']:.3f} | {acc['deel_lip']:.3f} | "
            f"{acc['plain_avg']:.3f} | {acc['unconstrained']:.3f} | {cert} | "
            f"{row['export_max_abs_diff']:.1e} |"
        )
    kernel_shape = "x".join(map(str, report.get("kernel_shape", (128, 28, 28, 16))))
    lines += [
        "",
        f"Forward + backward of one layer on a {kernel_shape} tensor, median milliseconds, "
        "and ratio to Keras's ReLU (activations) or average pooling (poolings):",
        "",
        "| layer | default ms | ratio | xla ms | ratio |",
        "|---|---|---|---|---|",
    ]
    for row in report["kernels"]:
        lines.append(
            f"| {row['layer']} | {row['default_ms']:.1f} | {_fmt(row.get('default_ratio'))} | "
            f"{row['xla_ms']:.1f} | {_fmt(row.get('xla_ratio'))} |"
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
    parser.add_argument(
        "--save", action="store_true", help="write latest.{json,md} (committed) not scratch"
    )
    parser.add_argument("--architectures", nargs="+", default=["small", "wide"])
    args = parser.parse_args(argv)

    from benchmarks.kernels import run_kernel_benchmark
    from benchmarks.memory import measure_in_subprocess
    from benchmarks.normalization import SHAPES, run_normalization_benchmark
    from benchmarks.training import BUILDS, run_training_benchmark

    started = time.perf_counter()
    if args.quick:
        settings = dict(epochs=2, n_train=256, n_test=128, inference_repeats=1)
        shapes, repeats, kernel_shape = SHAPES[:2], 2, (8, 28, 28, 16)
    else:
        settings = dict(epochs=6, n_train=4000, n_test=1000, inference_repeats=5)
        shapes, repeats, kernel_shape = SHAPES, 11, (128, 28, 28, 16)
    # The wide model is slow without XLA on 2 cores: fewer builds and epochs.
    wide_builds = ("deel_lip", "deel_lip_xla", "unconstrained", "plain_avg", "plain_avg_xla")
    report = {
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "device": _device(),
        "date": time.strftime("%Y-%m-%d"),
        "quick": args.quick,
        "training": [],
    }
    for arch in args.architectures:
        print(f"[bench] training {arch} ...", flush=True)
        arch_settings = dict(settings)
        names = tuple(BUILDS)
        if arch == "wide":
            names = wide_builds
            arch_settings["epochs"] = min(settings["epochs"], 4)
        row = run_training_benchmark(arch, names=names, **arch_settings)
        if not args.quick:
            memory = {
                which: measure_in_subprocess(arch, which, epochs=1)
                for which in ("deel_lip", "unconstrained", "plain_avg")
            }
            row["memory_kb"] = memory
            row["memory_ratio_first_epoch"] = memory["deel_lip"]["first_epoch_kb"] / max(
                memory["unconstrained"]["first_epoch_kb"], 1
            )
        print(
            f"[bench] {arch}: ratio default {row['ratio_default']:.3f}, "
            f"xla {row.get('ratio_xla', float('nan')):.3f} (fastest baseline "
            f"{row['fastest_baseline']}), vs unconstrained {row['ratio_vs_unconstrained']:.3f}",
            flush=True,
        )
        report["training"].append(row)
    print("[bench] activation / pooling kernels ...", flush=True)
    report["kernel_shape"] = list(kernel_shape)
    report["kernels"] = run_kernel_benchmark(kernel_shape, repeats=repeats)
    print("[bench] normalisation micro-benchmark ...", flush=True)
    report["normalization"] = run_normalization_benchmark(shapes, repeats=repeats)
    report["run_seconds"] = time.perf_counter() - started
    stem = "latest" if args.save else "scratch"
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (args.output / f"{stem}.md").write_text(_markdown(report))
    print(_markdown(report))
    print(f"[bench] {report['run_seconds']:.0f} s, written to {args.output / stem}.{{json,md}}")
    return report


if __name__ == "__main__":
    main()
