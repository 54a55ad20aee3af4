"""Categories in parallel through torchrun: two ranks on the CPU (gloo) give the sequential table."""
import os
import subprocess
import sys
from pathlib import Path

import torch

import main
from tests.helpers import read_rows

REPOSITORY = Path(__file__).resolve().parent.parent


def test_two_ranks_give_the_sequential_table(tmp_path, demo_args):
    arguments = demo_args("--categories=demo_texture,demo_object")
    # torchrun gives each of several ranks one thread; the sequential run uses one too, so that
    # both sum in the same order.
    ranks = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            "main.py", *arguments, "--run_name=ranks"], cwd=REPOSITORY, capture_output=True,
                           text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert ranks.returncode == 0, ranks.stderr[-2000:]
    assert "rank 1 of 2" in ranks.stdout and ranks.stdout.count("| mean |") == 1  # rank 0 alone writes the table
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main.main([*arguments, "--run_name=sequential"]) == 0
    finally:
        torch.set_num_threads(threads)
    merged, sequential = (read_rows(tmp_path / "results" / name / "metrics.csv") for name in ("ranks", "sequential"))
    assert [row["category"] for row in merged] == ["demo_texture", "demo_object", "mean"]
    assert merged == sequential
