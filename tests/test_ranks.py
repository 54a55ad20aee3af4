"""Categories in parallel through torchrun: two ranks on the CPU (gloo) give the sequential table,
sharing the (category, seed) pairs of several seeds; a rank that fails stops every rank cleanly,
the error printed once."""
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import main
from tests.helpers import read_rows
from tests.ranks_job import BAD_INPUT
from utils.errors import InputError
from utils.ranks import Ranks, run_together

REPOSITORY = Path(__file__).resolve().parent.parent


def test_two_ranks_give_the_sequential_multi_seed_table(tmp_path, demo_args):
    arguments = demo_args("--seeds=111,1")  # one category: the two ranks train a seed each
    # torchrun gives each of several ranks one thread; the sequential run uses one too, so that
    # both sum in the same order. It runs here while the ranks start (their imports take seconds).
    # Its output goes to files: a pipe nobody reads while the sequential run works could fill and stall it.
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        launched = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                     "--nproc_per_node=2", "main.py", *arguments, "--run_name=ranks"], cwd=REPOSITORY,
                                    stdout=out, stderr=err, env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            torch.set_num_threads(1)  # conftest puts the thread count back
            assert main.main([*arguments, "--run_name=sequential"]) == 0
            launched.wait(timeout=600)
        finally:  # torchrun stops its ranks on SIGTERM; nothing to stop when it has exited
            launched.terminate()
            launched.wait()
    out, err = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    assert launched.returncode == 0, err[-2000:]
    assert "rank 1 of 2" in out and out.count("| mean |") == 1  # rank 0 alone writes the table
    assert "1 of 2 trainings (rank 1 of 2)" in out
    for table in ("metrics.csv", "metrics_per_seed.csv"):
        merged, sequential = (read_rows(tmp_path / "results" / name / table) for name in ("ranks", "sequential"))
        assert merged == sequential
    assert [row["category"] for row in merged] == ["demo_texture seed 111", "demo_texture seed 1"]
    means = read_rows(tmp_path / "results" / "ranks" / "metrics.csv")
    assert [row["category"] for row in means] == ["demo_texture", "mean"]
    assert means[0]["seeds"] == "1,111" and float(means[1]["pixel_auroc_std"]) > 0


# ---- how ranks stop ---------------------------------------------------------

def test_a_rank_that_stops_on_bad_input_stops_every_rank_cleanly(tmp_path):
    """torchrun, two ranks on the CPU: rank 1 raises InputError while rank 0 works on. The sentence is
    printed once, by rank 0; no rank prints a traceback or aborts; the launcher exits with 1."""
    logs = tmp_path / "logs"
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               f"--log-dir={logs}", "--redirects=3", "tests/ranks_job.py", "input"],
                              cwd=REPOSITORY, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPOSITORY)})
    # Each rank's stderr, as torchrun saved it: <logs>/<run id>/attempt_0/<rank>/stderr.log.
    errors = {int(path.parent.name): path.read_text() for path in logs.rglob("stderr.log")}
    assert launched.returncode == 1, launched.stderr[-2000:]
    assert errors[0].startswith(f"error: {BAD_INPUT}\n") and "".join(errors.values()).count(BAD_INPUT) == 1
    for text in errors.values():
        assert "Traceback" not in text and "terminate called" not in text
    # torchrun's own report (it adds a traceback of its own whenever a rank fails) shows no rank aborted. It may
    # show SIGTERM: torchrun stops the ranks still running as soon as one exits with an error, and the other
    # may still be shutting down, its message out.
    assert "SIGABRT" not in launched.stderr and "Signal 6 " not in launched.stderr


def _run_ranks(tmp_path, job, world=2):
    """run_together(lambda: job(ranks)) on `world` forked processes joined by a gloo group, as torchrun's
    ranks are: their exit statuses (99 when the group was left undestroyed) and what each wrote on stderr."""
    tmp_path.mkdir(exist_ok=True)
    context = multiprocessing.get_context("fork")  # the children start at once, with torch imported
    processes = [context.Process(target=_rank, args=(Ranks(rank, world), tmp_path, job)) for rank in range(world)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        if process.is_alive():
            process.kill()
    statuses = [process.exitcode for process in processes]
    return statuses, [(tmp_path / f"stderr{rank}").read_text() for rank in range(world)]


def _rank(ranks, folder, job):
    sys.stderr = open(folder / f"stderr{ranks.rank}", "w", buffering=1)  # pytest's capture is the parent's
    os.dup2(sys.stderr.fileno(), 2)  # and what C++ code (gloo) writes
    dist.init_process_group("gloo", init_method=f"file://{folder / 'store'}", rank=ranks.rank,
                            world_size=ranks.world)
    status = run_together(lambda: job(ranks), ranks)
    sys.exit(99 if dist.is_initialized() else status)


def _gather_then(status):
    def job(ranks):
        assert ranks.gather(ranks.rank) == list(range(ranks.world))
        return status
    return job


def test_ranks_that_all_succeed_return_their_status(tmp_path):
    assert _run_ranks(tmp_path, _gather_then(0)) == ([0, 0], ["", ""])
    assert _run_ranks(tmp_path / "diverged", _gather_then(1))[0] == [1, 1]


def test_a_rank_that_cannot_write_stops_the_rank_that_finished(tmp_path):
    """Rank 0 cannot write the table while rank 1 has finished its job and waits at the end."""
    def job(ranks):
        if ranks.rank == 0:
            raise PermissionError(13, "Permission denied", "/results/run/metrics.csv")
        return 0

    statuses, errors = _run_ranks(tmp_path, job)
    assert statuses == [1, 1]
    assert errors == ["error: cannot write /results/run/metrics.csv (Permission denied); check --results_dir and "
                      "--checkpoint_dir.\n", ""]


def test_the_same_error_on_every_rank_is_printed_once(tmp_path):
    """A bad constant: every rank fails in the same place, before any exchange."""
    def job(ranks):
        raise InputError("--epochs expects int, got 'ten'.")

    assert _run_ranks(tmp_path, job) == ([1, 1], ["error: --epochs expects int, got 'ten'.\n", ""])


def test_agree_stops_every_rank_with_every_ranks_message(tmp_path):
    def job(ranks):
        def check():
            raise InputError(f"Image {ranks.rank}.png cannot be read.")
        ranks.agree(check)
        raise AssertionError("a rank went on alone")

    assert _run_ranks(tmp_path, job) == ([1, 1], ["error: Image 0.png cannot be read.\n"
                                                  "error: Image 1.png cannot be read.\n", ""])


def test_a_rank_that_dies_leaves_one_line_on_the_others(tmp_path):
    """A rank killed (out of memory, a crash) never reaches an exchange: the other loses contact."""
    def job(ranks):
        if ranks.rank == 1:
            os._exit(3)
        ranks.gather(None)
        return 0

    statuses, errors = _run_ranks(tmp_path, job)
    assert statuses == [1, 3]
    assert errors[0].startswith("error: rank 0 lost contact with the other ranks (") and errors[0].count("\n") == 1


def test_one_process_prints_the_error_and_returns_1(capsys):
    assert run_together(lambda: 0, Ranks()) == 0

    def fail():
        raise InputError("Dataset folder /data does not exist.")

    assert run_together(fail, Ranks()) == 1
    assert capsys.readouterr().err == "error: Dataset folder /data does not exist.\n"
