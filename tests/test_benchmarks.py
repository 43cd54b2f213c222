"""The benchmark scripts run and print the JSON the README quotes (tiny sizes: a smoke test of
the scripts, not a timing)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.mark.slow
def test_train_step_benchmark_prints_ratios_and_memory():
    report = _run("bench_train_step.py", "--size", "tiny", "--threads", "1", "--repeats", "1")
    rows = report["results"]
    timing = [r for r in rows if "median_s" in r]
    assert len(timing) == 1 and timing[0]["threads"] == 1 and timing[0]["load"] == "idle"
    for key in ("soft_phase_over_topk", "hard_phase_over_topk"):
        assert math.isfinite(timing[0][key]) and timing[0][key] > 0
    assert timing[0]["encode_decode"]["encode_decode_over_topk"] > 0
    (memory,) = [r["peak_step_memory_mib"] for r in rows if "peak_step_memory_mib" in r]
    assert set(memory) == {"soft_phase", "hard_phase", "topk"}


@pytest.mark.slow
def test_soft_topk_benchmark_prints_ratios_and_row_sums():
    report = _run(
        "bench_soft_topk.py",
        "--rows",
        "32",
        "--n",
        "512",
        "--k",
        "8",
        "--alphas",
        "0.01",
        "--repeats",
        "1",
    )
    (result,) = report["results"]
    assert result["forward_backward_over_matmul"] > 0
    assert result["max_row_sum_rel_error"] < 1e-5


def test_dense_inputs_floor_benchmark_prints_scores_per_setting():
    report = _run(
        "dense_inputs_floor.py",
        "--true-l0",
        "16",
        "--floors",
        "0.05",
        "--seeds",
        "0",
        "--steps",
        "60",
        "--hard-selection-coefficients",
        "0",
        "1",
    )
    names = {r["sae"] for r in report["results"]}
    soft = "soft alpha_end=0.05 hard_topk_fraction=0.04"
    assert names == {"topk", soft, soft + " hard_selection_loss_coefficient=1.0"}
    for row in report["results"]:
        assert row["true_l0"] == 16 and row["k"] == 8
        assert -10 < row["explained_variance"]["mean"] <= 1
        assert 0 < row["l0"]["mean"] <= 8
