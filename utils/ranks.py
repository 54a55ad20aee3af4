"""Categories in parallel through PyTorch's own launcher: `torchrun --nproc_per_node=N main.py ...`.

Each rank takes every N-th category (each category is seeded on its own, so which rank
runs it changes nothing) and rank 0 writes the merged table. Ranks talk only through
small Python objects, over gloo, so the same code runs on CPUs and GPUs, one node or
several (torchrun's rendezvous).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from utils.errors import InputError


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
            dist.init_process_group("gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]))

    def share(self, items: Sequence[Any]) -> list[Any]:
        """This rank's items: every world-th one, starting at its rank."""
        return list(items[self.rank::self.world])

    def gather(self, value: Any) -> list[Any]:
        """Every rank's value, in rank order, on every rank."""
        if self.world == 1:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def agree(self, work: Callable[[], None], only_rank: int | None = None) -> None:
        """Run `work` on every rank (or on `only_rank` alone); if it raises InputError on any
        rank, raise it on every rank (rank 0 prints it), so that no rank goes on alone."""
        try:
            if only_rank in (None, self.rank):
                work()
            message = None
        except InputError as error:
            message = str(error)
        messages = [message for message in self.gather(message) if message is not None]
        if messages:
            raise InputError("\n".join(dict.fromkeys(messages)))
