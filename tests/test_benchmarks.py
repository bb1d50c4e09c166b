"""The benchmark runs end to end on tiny settings (the figures live in benchmarks/results)."""

import json

import pytest

pytest.importorskip("benchmarks.run")


@pytest.mark.slow  # 84 s on 2 cores; `make bench` runs the real thing
def test_benchmark_quick_run_writes_scratch_results_only(tmp_path):
    from benchmarks.run import main

    report = main(["--quick", "--output", str(tmp_path), "--architectures", "small"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scratch.json", "scratch.md"]
    saved = json.loads((tmp_path / "scratch.json").read_text())
    assert saved["device"] == report["device"] and saved["device"]
    row = report["training"][0]
    assert row["architecture"] == "small"
    baselines = ("plain_avg", "plain_avg_xla", "plain_max", "plain_max_xla")
    fastest = min(row["epoch_seconds"][name] for name in baselines)
    assert row["epoch_seconds"][row["fastest_baseline"]] == fastest
    assert row["ratio_default"] == pytest.approx(row["epoch_seconds"]["deel_lip"] / fastest)
    assert row["ratio_xla"] == pytest.approx(row["epoch_seconds"]["deel_lip_xla"] / fastest)
    assert row["builds"]["deel_lip"]["jit_compile"] == "auto"
    assert row["export_max_abs_diff"] <= 1e-5
    assert 0.0 <= row["accuracy"]["deel_lip"] <= 1.0
    layers = {k["layer"]: k for k in report["kernels"]}
    assert {"GroupSort2", "ScaledL2NormPooling2D", "ReLU (keras)"} <= set(layers)
    assert layers["GroupSort2"]["default_ratio"] > 0 and layers["GroupSort2"]["xla_ratio"] > 0
    table = (tmp_path / "scratch.md").read_text()
    assert "| small |" in table and "speed-up" in table and "GroupSort2" in table

    main(["--quick", "--save", "--output", str(tmp_path), "--architectures", "small"])
    assert (tmp_path / "latest.json").exists() and (tmp_path / "latest.md").exists()
