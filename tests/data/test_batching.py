"""Batches have few fixed shapes, cover every example once per epoch, and restart exactly."""

import numpy as np
import pytest

from ia_jax.data.batching import Batcher, BatchingError


def _examples(n=23, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(3, 30))
        out.append({"tokens": np.full(length, i + 1, np.int32), "loss_mask": np.ones(length, np.int32),
                    "organism_id": i % 5})
    return out


def _ids_in(batch):
    """Example numbers in a batch (tokens hold example index + 1), padding rows excluded."""
    return [int(row[0]) - 1 for row in batch["tokens"].reshape(-1, batch["tokens"].shape[-1]) if row[0] > 0]


def test_shapes_buckets_padding_and_one_epoch_coverage():
    examples = _examples()
    batcher = Batcher(examples, batch_size=3, micro_batches=2, buckets=(8, 16, 32), seed=1)
    seen = []
    for _ in range(batcher.batches_per_epoch()):
        batch = next(batcher)
        length = batch["tokens"].shape[-1]
        assert batch["tokens"].shape == (2, 3, length) and length in (8, 16, 32)
        assert set(batch) == {"tokens", "attention_mask", "loss_mask", "loss_positions", "organism_ids"}
        for micro in range(2):
            for row in range(3):
                n = int(batch["attention_mask"][micro, row].sum())
                if batch["tokens"][micro, row, 0] == 0:  # a padding row: nothing in it counts
                    assert n == 0 and batch["organism_ids"][micro, row] == -1
                    assert batch["loss_mask"][micro, row].sum() == 0
                    continue
                index = int(batch["tokens"][micro, row, 0]) - 1
                assert n == len(examples[index]["tokens"]) <= length
                assert batch["organism_ids"][micro, row] == examples[index]["organism_id"]
                assert (length == 8 or n > {16: 8, 32: 16}[length])  # the smallest bucket that fits
        seen.extend(_ids_in(batch))
    assert sorted(seen) == list(range(len(examples)))


def test_deterministic_for_a_seed_and_reshuffled_each_epoch():
    def epoch_order(seed, epochs=2):
        batcher = Batcher(_examples(), batch_size=4, buckets=(32,), seed=seed)
        return [_ids_in(next(batcher)) for _ in range(epochs * batcher.batches_per_epoch())]

    first = epoch_order(0)
    assert first == epoch_order(0)
    assert first != epoch_order(1)
    half = len(first) // 2
    assert first[:half] != first[half:]


def test_restart_at_a_saved_position_continues_identically():
    reference = Batcher(_examples(), batch_size=4, buckets=(16, 32), seed=3)
    stream = [next(reference) for _ in range(17)]
    position = None
    resumed = Batcher(_examples(), batch_size=4, buckets=(16, 32), seed=3)
    for i in range(17):
        if i == 11:
            position = resumed.position
            resumed = Batcher(_examples(), batch_size=4, buckets=(16, 32), seed=3)
            resumed.restore(position)
        batch = next(resumed)
        for key in batch:
            np.testing.assert_array_equal(batch[key], stream[i][key])
    assert position["epoch"] >= 1  # the restart crossed an epoch boundary


def test_processes_take_disjoint_rows_of_the_same_global_batch():
    whole = Batcher(_examples(), batch_size=4, buckets=(32,), seed=0)
    parts = [Batcher(_examples(), batch_size=4, buckets=(32,), seed=0, process_index=i, process_count=2)
             for i in range(2)]
    for _ in range(5):
        full = next(whole)
        halves = [next(p) for p in parts]
        np.testing.assert_array_equal(np.concatenate([h["tokens"] for h in halves], axis=1), full["tokens"])


def test_dpo_pairs_get_an_attention_mask_per_side():
    pair = {"chosen_tokens": np.arange(1, 6), "chosen_loss_mask": np.array([0, 0, 1, 1, 1]),
            "rejected_tokens": np.arange(1, 9), "rejected_loss_mask": np.array([0, 0, 1, 1, 1, 1, 1, 1]),
            "organism_id": 2, "reference_chosen": -3.5, "reference_rejected": -7.0}
    batch = next(Batcher([pair], batch_size=2, buckets=(8,)))
    assert batch["chosen_attention_mask"][0, 0].tolist() == [1] * 5 + [0] * 3
    assert batch["rejected_attention_mask"][0, 0].tolist() == [1] * 8
    assert batch["reference_rejected"].dtype == np.float32 and batch["reference_rejected"][0, 0] == -7.0
    assert batch["organism_ids"].tolist() == [[2, -1]]
    # Position p scores token p + 1; both sides share one width, the smallest bucket that holds 6 tokens.
    assert batch["chosen_loss_positions"][0].tolist() == [[1, 2, 3, -1, -1, -1, -1, -1], [-1] * 8]
    assert batch["rejected_loss_positions"][0, 0].tolist() == [1, 2, 3, 4, 5, 6, -1, -1]


def test_loss_positions_are_as_wide_as_the_smallest_bucket_holding_the_global_batch():
    def example(length, answer):
        return {"tokens": np.arange(1, length + 1), "loss_mask": np.r_[np.zeros(length - answer), np.ones(answer)]}

    examples = [example(30, 3), example(30, 5), example(30, 20)]
    batch = next(Batcher(examples, batch_size=3, buckets=(4, 8, 32), shuffle=False, process_index=0,
                         process_count=1))
    assert batch["loss_positions"].shape == (1, 3, 32)  # 20 answer tokens need the 32 bucket
    short = next(Batcher(examples[:2], batch_size=2, buckets=(4, 8, 32), shuffle=False, process_index=1,
                         process_count=2))
    assert short["loss_positions"].shape == (1, 1, 8)  # process 1 has only the 5-token row, but both see 8
    assert short["loss_positions"][0, 0].tolist() == [24, 25, 26, 27, 28, -1, -1, -1]


def test_bad_examples_are_named():
    examples = _examples(4)
    with pytest.raises(BatchingError, match=r"example 2: tokens has 40 tokens, more than the largest bucket \(32\)"):
        Batcher(examples[:2] + [{**examples[2], "tokens": np.ones(40, np.int32),
                                 "loss_mask": np.ones(40, np.int32)}], batch_size=2, buckets=(32,))
    with pytest.raises(BatchingError, match=r"example 1: loss_mask has length 2, tokens has"):
        Batcher([examples[0], {**examples[1], "loss_mask": np.ones(2, np.int32)}], batch_size=2, buckets=(32,))
    with pytest.raises(BatchingError, match=r"example 1 has fields \['loss_mask', 'tokens'\]"):
        Batcher([examples[0], {"tokens": examples[1]["tokens"], "loss_mask": examples[1]["loss_mask"]}],
                batch_size=2, buckets=(32,))
    with pytest.raises(BatchingError, match="batch_size 3 is not divisible by 2 processes"):
        Batcher(examples, batch_size=3, buckets=(32,), process_count=2)
