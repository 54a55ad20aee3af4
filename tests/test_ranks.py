"""Categories in parallel through torchrun: two ranks on the CPU (gloo) give the sequential table,
sharing the (category, seed) pairs of several seeds."""
import os
import subprocess
import sys
from pathlib import Path

import torch

import main
from tests.helpers import read_rows

REPOSITORY = Path(__file__).resolve().parent.parent


def test_two_ranks_give_the_sequential_multi_seed_table(tmp_path, demo_args):
    arguments = demo_args("--categories=demo_texture,demo_object", "--seeds=111,1")
    # torchrun gives each of several ranks one thread; the sequential run uses one too, so that
    # both sum in the same order.
    ranks = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            "main.py", *arguments, "--run_name=ranks"], cwd=REPOSITORY, capture_output=True,
                           text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert ranks.returncode == 0, ranks.stderr[-2000:]
    assert "rank 1 of 2" in ranks.stdout and ranks.stdout.count("| mean |") == 1  # rank 0 alone writes the table
    assert "2 of 4 trainings (rank 1 of 2)" in ranks.stdout
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main.main([*arguments, "--run_name=sequential"]) == 0
    finally:
        torch.set_num_threads(threads)
    for table in ("metrics.csv", "metrics_per_seed.csv"):
        merged, sequential = (read_rows(tmp_path / "results" / name / table) for name in ("ranks", "sequential"))
        assert merged == sequential
    assert [row["category"] for row in merged] == ["demo_texture seed 111", "demo_texture seed 1",
                                                   "demo_object seed 111", "demo_object seed 1"]
    means = read_rows(tmp_path / "results" / "ranks" / "metrics.csv")
    assert [row["category"] for row in means] == ["demo_texture", "demo_object", "mean"]
    assert all(row["seeds"] == "1,111" for row in means[:2]) and float(means[2]["pixel_auroc_std"]) > 0
