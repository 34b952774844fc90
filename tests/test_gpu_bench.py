"""The GPU benchmark (benchmarks/gpu_bench.py) runs at smoke size here, so it cannot rot before a device is
lent: one config (SAFA, the quickest to trace), float32, batch 2 at 32x128, one timed step, in a fresh process on the backend this
environment has (TensorFlow; the GPU machine runs it under JAX)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # a fresh process builds SAFA and traces one step (~30 s; GeoDTR under TensorFlow: 100 s)
def test_gpu_benchmark_runs_at_smoke_size(tmp_path):
    out = tmp_path / "gpu.json"
    env = dict(os.environ, KERAS_BACKEND=os.environ.get("CVGL_SMOKE_BACKEND", "tensorflow"), TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_bench", "--smoke", "--configs",
                           "safa_cvusa", "--precisions", "off", "--json", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| safa_cvusa | off | 2 |" in done.stdout
    assert "official GeoDTR" in done.stdout  # its row, or the line saying why it was skipped
    result = json.loads(out.read_text())
    row = result["rows"][0]
    assert result["smoke"] and row["batch"] == 2 and row["step_s"] > 0 and row["pairs_s"] > 0
    assert result["matmul_flops"]["off"] > 0


def test_the_side_by_side_benchmark_says_what_it_lacks(tmp_path):
    """benchmarks/official_bench.py needs a checkout of the official code and an interpreter with PyTorch; without
    them it names what is missing and how to get it, before any work."""
    from benchmarks import official_bench

    assert "git clone https://github.com/zxh009123/GeoDTR" in official_bench.check_reference(None, sys.executable)
    (tmp_path / "GeoDTR.py").write_text("")
    (tmp_path / "utils.py").write_text("")
    assert "--torch-python must name" in official_bench.check_reference(str(tmp_path), None)
    no_torch = tmp_path / "python-without-torch"
    no_torch.write_text("#!/bin/sh\nexit 1\n")
    no_torch.chmod(0o755)
    assert "cannot import torch" in official_bench.check_reference(str(tmp_path), str(no_torch))
    done = subprocess.run([sys.executable, "-m", "benchmarks.official_bench"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--reference must name" in done.stderr
