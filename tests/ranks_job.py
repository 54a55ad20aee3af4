"""A stand-in for main.py's job, run by torchrun for tests/test_ranks.py, so that the test of how ranks
stop does not depend on main.py: `python -m torch.distributed.run --nproc_per_node=2 tests/ranks_job.py CASE`.

CASE "input": rank 1 stops on bad input at once while rank 0 works on to its next gather;
"write": rank 0 cannot write a result while rank 1 finishes its job; "ok": no rank fails.
"""
import sys

from utils.errors import InputError
from utils.ranks import Ranks, run_together

# The sentence rank 1 stops with in the case "input".
BAD_INPUT = "Image /data/bottle/train/good/007.png is a broken symbolic link; restore it."


def job(case: str, ranks: Ranks) -> int:
    """Fail as `case` says, else gather every rank's number as run_categories gathers rows."""
    if case == "input" and ranks.rank == 1:
        raise InputError(BAD_INPUT)
    if case == "write" and ranks.rank == 0:
        raise PermissionError(13, "Permission denied", "/results/run/metrics.csv")
    if ranks.gather(ranks.rank) != list(range(ranks.world)):
        raise AssertionError("the ranks' numbers came back out of order")
    return 0


if __name__ == "__main__":
    ranks = Ranks.from_launcher()
    sys.exit(run_together(lambda: job(sys.argv[1], ranks), ranks))
