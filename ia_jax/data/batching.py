"""Fixed-shape batches from variable-length examples, deterministic and restartable.

jit compiles once per shape, so examples are padded up to the smallest of a few bucket lengths and
every batch comes from one bucket: a handful of shapes, not one per length. Each global batch holds
`micro_batches * batch_size` examples; the epoch's order is a pure function of (seed, epoch), so the
position `{epoch, index}` saved with a checkpoint is all a restart needs. With several processes each
takes its own rows of every global batch (see `put_global_batch`).

An example is a dict: 1-D `*tokens` fields (with matching `*loss_mask` fields) and scalars, e.g.
`{"tokens", "loss_mask", "organism_id"}` for SFT or `{"chosen_tokens", "chosen_loss_mask",
"rejected_tokens", "rejected_loss_mask", "organism_id", "reference_chosen", "reference_rejected"}`
for DPO. Batches add a `*attention_mask` per `*tokens` field and name `organism_id` `organism_ids`.
Integer scalars become int32 columns, other scalars float32. Each `*loss_mask` gets a
`*loss_positions` companion: the positions whose next token is a loss token, left-aligned and padded
with -1, as wide as the smallest bucket that holds every row's count in the global batch. The loss
then evaluates the LM head at those positions only: an IA answer is a fifth of its sequence, and
the head over a 32k-152k vocabulary is the largest matmul of a small model. Rows that only fill up the last batch of
a bucket are all padding, with integer columns (`organism_ids`) -1 and zero masks, so they add nothing
to any loss. `shuffle=False` keeps the examples' order (for one pass such as scoring).
"""

from __future__ import annotations

import bisect
from typing import Any, Iterator, Mapping, Sequence

import numpy as np


class BatchingError(ValueError):
    """An example the batcher cannot place; the message names the example and field."""


def _sequence_fields(example: Mapping[str, Any]) -> list[str]:
    return [k for k, v in example.items() if np.ndim(v) == 1]


class Batcher:
    def __init__(self, examples: Sequence[Mapping[str, Any]], *, batch_size: int, buckets: Sequence[int],
                 micro_batches: int = 1, seed: int = 0, pad_id: int = 0, process_index: int = 0,
                 process_count: int = 1, shuffle: bool = True):
        if not examples:
            raise BatchingError("no examples to batch")
        if batch_size % process_count:
            raise BatchingError(f"batch_size {batch_size} is not divisible by {process_count} processes")
        self.examples = list(examples)
        self.batch_size = batch_size
        self.micro_batches = micro_batches
        self.buckets = sorted(buckets)
        self.seed = seed
        self.shuffle = shuffle
        self.pad_id = pad_id
        self.process_index = process_index
        self.process_count = process_count
        self.sequence_fields = _sequence_fields(self.examples[0])
        self.scalar_fields = [k for k in self.examples[0] if k not in self.sequence_fields]
        self._bucket_of = [self._bucket(i, e) for i, e in enumerate(self.examples)]
        self.epoch, self.index = 0, 0
        self._plan = self._epoch_plan(0)

    def _bucket(self, index: int, example: Mapping[str, Any]) -> int:
        if set(example) != set(self.sequence_fields) | set(self.scalar_fields):
            raise BatchingError(f"example {index} has fields {sorted(example)}, expected "
                                f"{sorted(self.sequence_fields + self.scalar_fields)}")
        lengths = {k: len(example[k]) for k in self.sequence_fields}
        for field in self.sequence_fields:
            if field.endswith("loss_mask"):
                tokens_field = field[: -len("loss_mask")] + "tokens"
                if lengths[field] != lengths.get(tokens_field):
                    raise BatchingError(f"example {index}: {field} has length {lengths[field]}, "
                                        f"{tokens_field} has {lengths.get(tokens_field)}")
        longest = max(lengths.values())
        position = bisect.bisect_left(self.buckets, longest)
        if position == len(self.buckets):
            field = max(lengths, key=lengths.get)
            raise BatchingError(f"example {index}: {field} has {longest} tokens, more than the largest bucket "
                                f"({self.buckets[-1]}); add a bucket or shorten the example")
        return self.buckets[position]

    @property
    def examples_per_batch(self) -> int:
        return self.batch_size * self.micro_batches

    def _epoch_plan(self, epoch: int) -> list[tuple[int, list[int]]]:
        """(bucket, example indices) for every batch of the epoch, in order; -1 marks a padding row."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.examples)) if self.shuffle else np.arange(len(self.examples))
        per_bucket: dict[int, list[int]] = {}
        for i in order:
            per_bucket.setdefault(self._bucket_of[i], []).append(int(i))
        plan = []
        n = self.examples_per_batch
        for bucket in self.buckets:
            members = per_bucket.get(bucket, [])
            for start in range(0, len(members), n):
                chunk = members[start:start + n]
                plan.append((bucket, chunk + [-1] * (n - len(chunk))))
        return [plan[i] for i in rng.permutation(len(plan))] if self.shuffle else plan

    def batches_per_epoch(self) -> int:
        return len(self._plan)

    @property
    def position(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def restore(self, position: Mapping[str, int]) -> None:
        self.epoch, self.index = int(position["epoch"]), int(position["index"])
        self._plan = self._epoch_plan(self.epoch)

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if self.index >= len(self._plan):
            self.epoch, self.index = self.epoch + 1, 0
            self._plan = self._epoch_plan(self.epoch)
        bucket, members = self._plan[self.index]
        self.index += 1
        rows = self.batch_size // self.process_count
        local = []
        for micro in range(self.micro_batches):
            start = micro * self.batch_size + self.process_index * rows
            local.extend(members[start:start + rows])
        return self._collate(bucket, local, self._loss_width(bucket, members))

    def _loss_width(self, bucket: int, members: list[int]) -> int:
        """Width of the `*loss_positions` fields: from the whole global batch (`members` of every
        process), so all processes agree on the shape."""
        most = max((int(np.count_nonzero(np.asarray(self.examples[i][field])[1:]))
                    for i in members if i >= 0 for field in self.sequence_fields if field.endswith("loss_mask")),
                   default=1)
        return min(bucket, self.buckets[bisect.bisect_left(self.buckets, max(most, 1))])

    def _collate(self, bucket: int, members: list[int], loss_width: int) -> dict:
        shape = (self.micro_batches, len(members) // self.micro_batches)
        batch: dict[str, np.ndarray] = {}
        for field in self.sequence_fields:
            is_tokens = field.endswith("tokens")
            values = np.full((len(members), bucket), self.pad_id if is_tokens else 0, np.int32)
            attention = np.zeros((len(members), bucket), np.int32)
            for row, index in enumerate(members):
                if index >= 0:
                    sequence = np.asarray(self.examples[index][field])
                    values[row, : len(sequence)] = sequence
                    attention[row, : len(sequence)] = 1
            batch[field] = values.reshape(*shape, bucket)
            if field.endswith("loss_mask"):
                batch[field[: -len("mask")] + "positions"] = loss_positions(values, loss_width).reshape(
                    *shape, loss_width)
            if is_tokens:
                batch[field[: -len("tokens")] + "attention_mask"] = attention.reshape(*shape, bucket)
        for field in self.scalar_fields:
            name = "organism_ids" if field == "organism_id" else field
            is_int = np.issubdtype(np.asarray(self.examples[0][field]).dtype, np.integer)
            fill = -1 if is_int else 0.0  # padding rows: no organism, no example
            column = [self.examples[i][field] if i >= 0 else fill for i in members]
            batch[name] = np.asarray(column, np.int32 if is_int else np.float32).reshape(shape)
        return batch


def loss_positions(loss_mask_bt: np.ndarray, width: int) -> np.ndarray:
    """`[b, width]` positions p whose next token p + 1 is a loss token, in order, padded with -1."""
    positions = np.full((loss_mask_bt.shape[0], width), -1, np.int32)
    for row, mask in enumerate(loss_mask_bt):
        found = np.flatnonzero(mask[1:])
        if len(found) > width:
            raise BatchingError(f"row {row} has {len(found)} loss tokens, more than the {width} loss positions")
        positions[row, : len(found)] = found
    return positions
