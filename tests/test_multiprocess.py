"""Two processes on one CPU (torchrun + gloo) run the NeuroPictor recipe like one process.

``accelerate launch --cpu`` starts a single process (its multi-CPU path needs MPI), so the
multi-process check uses ``torchrun``, which ``accelerate.Accelerator`` picks up as MULTI_CPU.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUNS = ("i_encoder", "ii_multisubject", "iii_subj01")


def _train(out: Path, nproc: int) -> None:
    args = ["-m", "brainrecon.cli", "train", "neuropictor", "--preset", "smoke", "--out", str(out),
            "--heldout", "none", "--no-baselines", "--threads", "1"]
    if nproc > 1:
        torchrun = Path(sys.executable).parent / "torchrun"
        if not torchrun.exists():
            pytest.skip("torchrun is not installed beside this python")
        cmd = [str(torchrun), "--standalone", f"--nproc_per_node={nproc}", *args]
    else:
        cmd = [sys.executable, *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_match_one_within_noise(tmp_path):
    _train(tmp_path / "one", 1)
    _train(tmp_path / "two", 2)
    for run in RUNS:
        one = json.loads((tmp_path / "one" / run / "metrics.json").read_text())
        two = json.loads((tmp_path / "two" / run / "metrics.json").read_text())
        # every process took part (different batches per rank), the main one wrote the folder once
        assert (tmp_path / "two" / run / "run.json").is_file()
        key = "mse" if run == "i_encoder" else "noise_mse"
        assert two[key] == pytest.approx(one[key], rel=0.05), (run, one[key], two[key])
        assert one[key] != two[key]          # the second process really contributed its own batches


@pytest.mark.slow
def test_neuraldiffuser_trains_on_two_processes(tmp_path):
    """Its loss is a module's forward (DDP sees every pass), one subject's voxel encoder a step
    (find_unused_parameters), and each rank draws its own batches: two processes train and save once."""
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this python")
    out = tmp_path / "nd"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "brainrecon.cli", "train", "neuraldiffuser",
           "--preset", "smoke", "--out", str(out), "--threads", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("wrote ") == 1                       # the main process reports (and writes) once
    m = json.loads((out / "metrics.json").read_text())
    assert m["losses"]["finetune"]["steps"] == 20 and m["losses"]["pretrain"]["loss_final"] < m["losses"]["pretrain"]["loss_first"]
    assert (out / "reconstructor" / "model_index.json").is_file()
