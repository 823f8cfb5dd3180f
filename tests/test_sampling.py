"""Step-indexed sampling: epochs are permutations, ranks partition positions, resume starts mid-run."""

from __future__ import annotations

from types import SimpleNamespace

from sdft.data.sampling import RunSampler, epoch_order, item_at, run_sampler


def test_every_epoch_shows_every_item_once_in_a_fresh_order():
    orders = [epoch_order(7, epoch, seed=0) for epoch in range(4)]
    assert all(sorted(order) == list(range(7)) for order in orders)
    assert len({tuple(order) for order in orders}) > 1
    assert [item_at(p, 7, 0) for p in range(7, 14)] == orders[1]


def test_ranks_partition_the_run_positions():
    shards = [list(RunSampler(0, 12, num_replicas=3, rank=rank)) for rank in range(3)]
    assert sorted(p for shard in shards for p in shard) == list(range(12))
    assert shards[1] == [1, 4, 7, 10]
    assert len(RunSampler(0, 12, num_replicas=3, rank=1)) == 4


def test_resumed_sampler_yields_the_tail_of_the_uninterrupted_one():
    full, tail = RunSampler(0, 20, 2, 1), RunSampler(8, 20, 2, 1)
    assert list(tail) == list(full)[4:] and len(tail) == len(full) == 10


def test_a_step_spans_accumulated_batches_on_every_rank():
    # 4 steps of 2 accumulated batches of 3 on 2 ranks = 48 positions; step 1 is done, so 36 remain, 18 on rank 1;
    # the length stays the whole run's on this rank (24), as Lightning counts a resumed epoch from the batches done
    trainer = SimpleNamespace(max_steps=4, accumulate_grad_batches=2, world_size=2, global_rank=1, global_step=1)
    sampler = run_sampler(trainer, batch_size=3)
    assert sampler.positions == range(13, 48, 2) and len(list(sampler)) == 18 and len(sampler) == 24
