"""The benchmark runs end to end on tiny settings (the figures live in benchmarks/results)."""

import json

import pytest

pytest.importorskip("benchmarks.run")


def test_benchmark_quick_run_writes_results(tmp_path):
    from benchmarks.run import main

    report = main(["--quick", "--output", str(tmp_path), "--architectures", "small"])
    saved = json.loads((tmp_path / "latest.json").read_text())
    assert saved["training"][0]["architecture"] == "small"
    row = report["training"][0]
    assert row["epoch_ratio"] > 0
    assert row["export_max_abs_diff"] <= 1e-5
    assert 0.0 <= row["accuracy"]["deel_lip"] <= 1.0
    table = (tmp_path / "latest.md").read_text()
    assert "| small |" in table and "speed-up" in table
