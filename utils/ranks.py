"""Categories in parallel through PyTorch's own launcher: `torchrun --nproc_per_node=N main.py ...`.

Each rank takes every N-th category (each category is seeded on its own, so which rank
runs it changes nothing) and rank 0 writes the merged table. Ranks talk only through
small Python objects, over gloo, so the same code runs on CPUs and GPUs, one node or
several (torchrun's rendezvous).

Every exchange (gather, agree, and the end of `run_together`) also carries each rank's
state: a rank that fails on bad input waits at its next exchange to say so, and every
rank stops there together, the error printed once. A rank that simply exited would leave
the others waiting, or dying on a lost connection with a traceback.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn

import torch.distributed as dist

from utils.errors import InputError, reason

# How long a rank waits at an exchange for the others. A rank that has run its categories waits
# there for the slowest rank to finish all of its own, hours later with unequal shares; gloo's
# default (30 minutes) would end such a run with a timeout. A rank that dies is noticed at once
# (its connection closes), so this bounds only a rank that hangs.
WAIT_FOR_RANKS = timedelta(hours=48)


class Stopped(Exception):
    """Raised on every rank at the same exchange once one rank has failed: all ranks stop.

    messages: the failures' sentences, each once, in rank order; rank 0 prints them.
    """

    def __init__(self, messages: list[str]):
        super().__init__("\n".join(messages))
        self.messages = messages


class LostRanks(Stopped):
    """This rank could not reach the others (one died, or the exchange timed out); it prints its own
    messages, as no other rank can."""


@dataclass(frozen=True)
class _Report:
    """What a rank sends at an exchange: its value, or the sentence saying why it stopped."""

    value: Any = None
    failure: str | None = None


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks torchrun started (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0  # the rank on this node: picks its GPU

    @classmethod
    def from_launcher(cls) -> Ranks:
        if not dist.is_torchelastic_launched():
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=WAIT_FOR_RANKS)
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]))

    def share(self, items: Sequence[Any]) -> list[Any]:
        """This rank's items: every world-th one, starting at its rank."""
        return list(items[self.rank::self.world])

    def gather(self, value: Any) -> list[Any]:
        """Every rank's value, in rank order, on every rank; Stopped instead when a rank has failed."""
        reports = self._exchange(_Report(value))
        stopped = _stopped(reports)
        if stopped:
            raise stopped
        return [report.value for report in reports]

    def agree(self, work: Callable[[], None], only_rank: int | None = None) -> None:
        """Run `work` on every rank (or on `only_rank` alone); if it raises InputError on any rank,
        every rank raises Stopped with every rank's message, so that no rank goes on alone."""
        try:
            if only_rank in (None, self.rank):
                work()
        except InputError as error:
            self.stop(str(error))
        self.gather(None)

    def stop(self, message: str) -> NoReturn:
        """Stop every rank at its next exchange, telling it `message`: raises Stopped once every other
        rank has reached an exchange (this rank waits there until then)."""
        raise _stopped(self._exchange(_Report(failure=message)))

    def _exchange(self, report: _Report) -> list[_Report]:
        """Every rank's report, in rank order, on every rank; LostRanks when the others cannot be reached."""
        reports = [report]
        if self.world > 1:
            reports = [None] * self.world
            try:
                dist.all_gather_object(reports, report)
            except RuntimeError as error:  # gloo: a peer's connection closed, or the wait timed out
                lost = (f"rank {self.rank} lost contact with the other ranks ({reason(error)}); another rank"
                        " stopped, see its messages above.")
                raise LostRanks([message for message in (report.failure, lost) if message]) from None
        return reports


def run_together(job: Callable[[], int], ranks: Ranks | None = None) -> int:
    """Run `job`, the whole run returning its exit status, on this rank; returns this rank's exit status.

    An InputError or OSError ends the job on its rank and, at their next exchange (gather, agree,
    or the end of their job), on every other rank: rank 0 prints each failure's sentence once, as
    "error: ...", and every rank returns 1, with no traceback and no rank left waiting or aborted.
    The process group is destroyed before returning (gloo aborts a process that exits with one).
    Other exceptions (bugs, KeyboardInterrupt) pass through, with the group destroyed too.
    ranks: this process's place (Ranks.from_launcher() when None).
    """
    if ranks is None:
        ranks = Ranks.from_launcher()
    try:
        try:
            status = job()
            ranks.gather(None)  # the end of the job: where a rank that failed waits to tell the others
            return status
        except (InputError, OSError) as error:
            ranks.stop(failure_sentence(error))
    except LostRanks as lost:
        _print_errors(lost.messages)
        return 1
    except Stopped as stopped:
        if ranks.rank == 0:
            _print_errors(stopped.messages)
        try:
            # No rank returns before rank 0 has printed: torchrun stops every rank as soon as one exits
            # with an error, and rank 0 would be stopped before its message.
            ranks.gather(None)
        except LostRanks:
            pass  # a rank stopped at once all the same; the messages are out
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _stopped(reports: list[_Report]) -> Stopped | None:
    """Stopped with the failures among `reports`, each once, in rank order; None when there are none."""
    failures = list(dict.fromkeys(report.failure for report in reports if report.failure is not None))
    return Stopped(failures) if failures else None


def failure_sentence(error: InputError | OSError) -> str:
    """What a rank prints for its failure: an InputError's own sentence; for an OSError (a folder that
    cannot be written: read-only, full, a file in its place) the file and the reason."""
    if isinstance(error, InputError):
        return str(error)
    return f"cannot write {error.filename or 'a file'} ({reason(error)}); check --results_dir and --checkpoint_dir."


def _print_errors(messages: list[str]) -> None:
    for message in messages:
        print(f"error: {message}", file=sys.stderr)
