"""Which rank does what. Colocated: every rank generates and trains. Disaggregated: the first
``rollout.ranks`` ranks only generate, the rest only train; this builds the process groups each side talks
over, once, right after the world's process group (every rank must create them, in the same order)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Placement:
    """This rank's role and the groups of its side. In colocated mode every group is None (the world)."""

    rank: int
    """This rank in the world."""
    world: int
    """Ranks in the world."""
    rollout_ranks: tuple[int, ...]
    """World ranks that hold a rollout engine (all of them, colocated)."""
    trainer_ranks: tuple[int, ...]
    """World ranks that train (all of them, colocated); they form the FSDP2 group."""
    train_group: object = None
    """The trainer ranks' group: FSDP2, the update's collectives, checkpoints (None: the world)."""
    sync_group: object = None
    """The rollout ranks and the first trainer rank: orders and weights, broadcast from that trainer."""
    object_group: object = None
    """Every rank, over gloo: pickled batches and eval counts, point to point (a CPU path on CUDA too)."""

    @property
    def disaggregated(self) -> bool:
        return self.sync_group is not None

    @property
    def is_trainer(self) -> bool:
        return self.rank in self.trainer_ranks

    @property
    def is_rollout(self) -> bool:
        return self.rank in self.rollout_ranks

    @property
    def train_rank(self) -> int:
        """This rank's place among the trainer ranks (its share of each step's prompts)."""
        return self.trainer_ranks.index(self.rank)

    @property
    def train_world(self) -> int:
        return len(self.trainer_ranks)

    @property
    def lead_trainer(self) -> int:
        """The world rank that writes metrics and checkpoint manifests and sends orders."""
        return self.trainer_ranks[0]

    def shares(self, rollout_rank: int) -> list[int]:
        """The trainer shares (trainer-rank indices) a rollout rank generates: round robin."""
        k = self.rollout_ranks.index(rollout_rank)
        return [t for t in range(self.train_world) if t % len(self.rollout_ranks) == k]


def place(mode: str, rollout_ranks: int, device: torch.device) -> Placement:
    """Collective (when disaggregated): this rank's ``Placement`` in the initialized world."""
    rank, world = dist.get_rank(), dist.get_world_size()
    everyone = tuple(range(world))
    if mode == "colocated":
        return Placement(rank, world, everyone, everyone)
    rollout, trainers = everyone[:rollout_ranks], everyone[rollout_ranks:]
    train_group = dist.new_group(list(trainers))
    sync_group = dist.new_group(list(rollout) + [trainers[0]])
    # batches are pickled bytes: gloo moves them between CPU buffers on any device
    object_group = dist.new_group(list(everyone), backend="gloo") if device.type != "cpu" else dist.group.WORLD
    return Placement(rank, world, rollout, trainers, train_group, sync_group, object_group)
