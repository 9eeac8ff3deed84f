"""`dynslice slice` end to end on a tiny local model folder (a real subprocess, like a user's shell)."""

import subprocess
import sys


import dynslice
from dynslice.counts import sliced_parameters
from conftest import model_folder, param_count




def test_slice_command(tmp_path):
    folder, dense = model_folder(tmp_path)
    out = tmp_path / "sliced"
    result = subprocess.run(
        [sys.executable, "-m", "dynslice", "slice", "--model", str(folder), "--calib", str(tmp_path / "calib.txt"),
         "--sparsity", "0.25", "--out", str(out), "--nsamples", "4", "--seqlen", "32", "--round-to", "4"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "slicing layers" in result.stderr  # the progress bar
    model = dynslice.load_sliced(out)
    plan = dynslice.SlicePlan.constant(3, 32, 0.25, round_to=4)
    assert model.config.dynslice["widths"] == list(plan.widths)
    assert param_count(model) == sliced_parameters(plan, dense.config)
    assert f"{param_count(model):,} parameters" in result.stdout


def test_slice_command_reports_bad_input(tmp_path):
    folder, _ = model_folder(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "dynslice", "slice", "--model", str(folder), "--calib", str(tmp_path / "calib.txt"),
         "--sparsity", "1.5", "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "sparsity must be in [0, 1)" in result.stderr
