"""One jitted train step for every stage: the toy base (all weights), organisms (a stacked adapter)
and the introspection adapter (a shared adapter on top of frozen organisms), under SFT or DPO.

What is trained is chosen by `Composition.trainable`; everything else is frozen and passed in as an
argument, never captured, so one compiled step serves any organism set of the same shapes. The step
is a pure function `(state, frozen, batch, rng) -> (state, metrics)` compiled once per batch shape
with explicit shardings and the train state donated. Gradient accumulation scans micro-batches and
divides summed losses by the summed weight (tokens or pairs), so it equals one big batch exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh

from ia_jax.lora.adapter import LoraAdapter, LoraConfig, check_ids
from ia_jax.models.decoder import check_remat
from ia_jax.parallel import sharding
from ia_jax.training import losses


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class AdapterSlot:
    """One adapter of the composition: its LoRA config, and slot count if stacked (None = shared)."""

    config: LoraConfig
    num_slots: int | None = None


@dataclasses.dataclass(frozen=True)
class Composition:
    """Base model structure + the adapters applied on every forward, and which part is trained.

    `trainable` is "base" or the index of the trained adapter in `adapters`. Weights travel as
    `{"base": pure dict of the base params, "adapters": [adapter weights, ...]}`.
    """

    graphdef: Any
    adapters: tuple[AdapterSlot, ...] = ()
    trainable: str | int = "base"
    remat: str = "projections"  # a decoder.REMAT_POLICIES name
    activation_mesh: tuple | None = None  # (mesh, rules): pin activations to the batch layout

    def __post_init__(self):
        check_remat(self.remat)

    def split(self, weights: dict) -> tuple[Any, dict]:
        """(trainable params, frozen weights with the trainable part set to None)."""
        frozen = {"base": weights["base"], "adapters": list(weights["adapters"])}
        if self.trainable == "base":
            frozen["base"] = None
            return weights["base"], frozen
        frozen["adapters"][self.trainable] = None
        return weights["adapters"][self.trainable], frozen

    def combine(self, params, frozen: dict) -> dict:
        weights = {"base": frozen["base"], "adapters": list(frozen["adapters"])}
        if self.trainable == "base":
            weights["base"] = params
        else:
            weights["adapters"][self.trainable] = params
        return weights

    def forward(self, weights: dict, tokens_bt, attention_mask_bt, organism_ids_b, dropout_rng=None,
                logit_positions_bl=None, trained_rows_s=None):
        """Logits of the composed model (at `logit_positions_bl` only, when given); stacked adapters
        take `organism_ids_b` as their slot ids. `trained_rows_s`: the trained stack arrives as a
        subset of its slots, slot i at row `trained_rows_s[i]` (see `make_train_step`)."""
        model = nnx.merge(self.graphdef, weights["base"])
        model.remat = self.remat
        model.activation_mesh = self.activation_mesh
        adapters = []
        for i, (slot, w) in enumerate(zip(self.adapters, weights["adapters"])):
            # Frozen adapters run as at inference: the IA learns to read the organism it will be
            # audited on, not a noised one (and their dropout masks would be wasted work).
            config = slot.config if i == self.trainable else dataclasses.replace(slot.config, dropout=0.0)
            ids_b, num_slots = (organism_ids_b if slot.num_slots is not None else None), slot.num_slots
            if i == self.trainable and trained_rows_s is not None:
                ids_b = jnp.where(ids_b >= 0, trained_rows_s[jnp.maximum(ids_b, 0)], -1)
                num_slots = jax.tree.leaves(w)[0].shape[1]
            adapters.append((LoraAdapter(w, config, num_slots), ids_b))
        return model(tokens_bt, attention_mask_bt=attention_mask_bt, adapters=adapters, dropout_rng=dropout_rng,
                     logit_positions_bl=logit_positions_bl)

    def logical_axes(self, weights: dict, base_state) -> dict:
        """Logical axes for every weight: from the base Params' metadata and each adapter's layout."""
        base_axes = nnx.to_pure_dict(
            jax.tree.map(lambda v: v.get_metadata()["logical_axes"], base_state,
                         is_leaf=lambda v: isinstance(v, nnx.Variable))
        )
        adapter_axes = [
            LoraAdapter(w, slot.config, slot.num_slots).logical_axes()
            for slot, w in zip(self.adapters, weights["adapters"])
        ]
        return {"base": base_axes, "adapters": adapter_axes}


# An objective maps (forward, micro-batch) to (loss sum, weight, metric sums); see losses.py.
Objective = Callable[[Callable, dict], tuple[jax.Array, jax.Array, dict]]


def _organism_ids(batch, rows):
    """Examples without organisms (the base model's own data) run with no stacked adapter."""
    ids = batch.get("organism_ids")
    return jnp.full((rows,), -1, jnp.int32) if ids is None else ids


def scored_logits(forward, batch, prefix: str = "", organism_ids=None):
    """(logits_blv, targets_bl, weights_bl) over the loss tokens of `batch[prefix + "tokens"]`.

    With the batcher's `*loss_positions` the LM head runs at those positions only; a hand-made batch
    without them is scored at every position (the same sums, more work).
    """
    tokens = batch[prefix + "tokens"]
    ids = _organism_ids(batch, tokens.shape[0]) if organism_ids is None else organism_ids
    positions = batch.get(prefix + "loss_positions")
    if positions is None:
        logits = forward(tokens, batch[prefix + "attention_mask"], ids)
        return logits[:, :-1], tokens[:, 1:], batch[prefix + "loss_mask"][:, 1:].astype(jnp.float32)
    targets, weights = losses.at_positions(tokens, positions)
    return forward(tokens, batch[prefix + "attention_mask"], ids, jnp.maximum(positions, 0)), targets, weights


def sft_objective(forward, batch):
    return losses.target_sums(*scored_logits(forward, batch))


def dpo_objective(beta: float, label_smoothing: float = 0.0) -> Objective:
    """Chosen and rejected run as one forward of 2b rows; reference log-probs come with the batch."""

    def objective(forward, batch):
        logp_c, logp_r = policy_log_probs(forward, batch)
        return losses.dpo_sums(logp_c, logp_r, batch["reference_chosen"], batch["reference_rejected"], beta=beta,
                               label_smoothing=label_smoothing, valid_b=batch["chosen_attention_mask"].any(-1))

    return objective


def policy_log_probs(forward, batch):
    """Summed completion log-probs of chosen and rejected sequences, `[b]` each.

    Rows are interleaved (pair i -> rows 2i, 2i+1) rather than concatenated, so each pair stays on the
    device that holds it when the batch axis is sharded.
    """
    def interleave(chosen, rejected):
        return jnp.stack([chosen, rejected], axis=1).reshape(-1, *chosen.shape[1:])

    rows = batch["chosen_tokens"].shape[0]
    fields = ("tokens", "attention_mask", "loss_mask", "loss_positions")
    both = {field: interleave(batch["chosen_" + field], batch["rejected_" + field])
            for field in fields if "chosen_" + field in batch}
    logp = losses.target_log_probs(*scored_logits(forward, both, organism_ids=jnp.repeat(
        _organism_ids(batch, rows), 2))).reshape(rows, 2)
    return logp[:, 0], logp[:, 1]


def _present_slots(organism_ids, num_slots):
    ids = organism_ids.reshape(-1)
    return jnp.zeros((num_slots,), jnp.bool_).at[jnp.where(ids >= 0, ids, 0)].max(ids >= 0)


def _slot_subset(organism_ids, num_slots):
    """(slots_k, rows_s, present_k): `k` distinct slots, k = the batch's example count (so every present
    slot fits), present ones first and absent ones after; `rows_s` maps each slot to its row in
    `slots_k` (>= k: not in it); `present_k` marks the present ones."""
    k = min(num_slots, organism_ids.size)
    present_s = _present_slots(organism_ids, num_slots)
    order_s = jnp.argsort(~present_s, stable=True).astype(jnp.int32)
    slots_k = order_s[:k]
    return slots_k, jnp.argsort(order_s).astype(jnp.int32), present_s[slots_k]


def make_train_step(composition: Composition, objective: Objective, optimizer: optax.GradientTransformation,
                    schedule: Callable | None = None):
    """The pure step. Batch leaves are `[micro_batches, batch, ...]`.

    Training a stacked adapter: slots absent from the batch keep their weights and Adam moments
    exactly (as if their optimizer had not stepped). The step count used for bias correction and the
    learning-rate schedule is shared by all slots, and clipping uses the norm over all slots.

    With more slots than the batch has examples, the step differentiates, clips and updates only as
    many slots as there are examples (the present ones first) and writes them back: a job of hundreds
    of organisms pays per step for the organisms in the batch, not for a gradient and an Adam update
    of the whole stack.
    """
    trained_slot = None if composition.trainable == "base" else composition.adapters[composition.trainable]

    def loss_fn(params, frozen, micro_batch, rng, trained_rows_s=None):
        weights = composition.combine(params, frozen)

        def forward(tokens, attention_mask, organism_ids, logit_positions=None):
            return composition.forward(weights, tokens, attention_mask, organism_ids, dropout_rng=rng,
                                       logit_positions_bl=logit_positions, trained_rows_s=trained_rows_s)

        loss_sum, weight, sums = objective(forward, micro_batch)
        return loss_sum, (weight, sums)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, frozen, batch, rng):
        step_rng = jax.random.fold_in(rng, state.step)
        stacked = trained_slot is not None and trained_slot.num_slots is not None
        params, opt_state = state.params, state.opt_state
        # Which optimizer-state leaves are shaped like the parameters (Adam's moments, not its count).
        is_param = optax.tree_map_params(optimizer, lambda _: True, opt_state, transform_non_params=lambda _: False)
        slots_k = rows_s = present_k = None  # set when only a subset of the stack is trained this step
        if stacked and batch["organism_ids"].size < trained_slot.num_slots:
            slots_k, rows_s, present_k = _slot_subset(batch["organism_ids"], trained_slot.num_slots)
            take = lambda x: x[:, slots_k]  # noqa: E731  (slot axis 1 in every [layers, slots, ...] leaf)
            params = jax.tree.map(take, params)
            opt_state = optax.tree_map_params(optimizer, take, opt_state)

        def accumulate(carry, inputs):
            micro_batch, index = inputs
            (loss_sum, (weight, sums)), grads = grad_fn(params, frozen, micro_batch,
                                                        jax.random.fold_in(step_rng, index), rows_s)
            acc_grads, acc_loss, acc_weight, acc_sums = carry
            grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
            return (jax.tree.map(jnp.add, acc_grads, grads), acc_loss + loss_sum, acc_weight + weight,
                    jax.tree.map(jnp.add, acc_sums, sums)), None

        micro_batches = jax.tree.leaves(batch)[0].shape[0]
        zero_sums = jax.eval_shape(lambda: loss_fn(params, frozen, jax.tree.map(lambda x: x[0], batch), None,
                                                   rows_s)[1][1])
        # Accumulate in float32 whatever the parameter dtype: bfloat16 sums lose small gradients.
        init = (jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params), jnp.zeros((), jnp.float32),
                jnp.zeros((), jnp.float32), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero_sums))
        (grads, loss_sum, weight, sums), _ = jax.lax.scan(
            accumulate, init, (batch, jnp.arange(micro_batches, dtype=jnp.int32)))
        weight = jnp.maximum(weight, 1.0)
        grads = jax.tree.map(lambda g, p: (g / weight).astype(p.dtype), grads, params)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        if stacked:
            present = _present_slots(batch["organism_ids"], trained_slot.num_slots) if slots_k is None else present_k

            def keep_absent(new, old):  # slot axis is 1 in every [layers, slots, ...] leaf
                return jnp.where(present.reshape((1, -1) + (1,) * (new.ndim - 2)), new, old)

            updates = jax.tree.map(lambda u: keep_absent(u, jnp.zeros_like(u)), updates)
            new_opt_state = jax.tree.map(lambda param_like, new, old: keep_absent(new, old) if param_like else new,
                                         is_param, new_opt_state, opt_state)
        new_params = optax.apply_updates(params, updates)
        if slots_k is not None:
            put = lambda full, part: full.at[:, slots_k].set(part)  # noqa: E731
            new_params = jax.tree.map(put, state.params, new_params)
            new_opt_state = jax.tree.map(lambda param_like, part, full: put(full, part) if param_like else part,
                                         is_param, new_opt_state, state.opt_state)
        metrics = {"loss": loss_sum / weight, **{k: v / weight for k, v in sums.items()},
                   "grad_norm": optax.tree.norm(grads), "weight": weight}
        if schedule is not None:
            metrics["learning_rate"] = schedule(state.step)
        return TrainState(step=state.step + 1, params=new_params, opt_state=new_opt_state), metrics

    return step


class Trainer:
    """Compiles the step for a mesh and keeps the shardings; the state itself stays with the caller."""

    def __init__(self, composition: Composition, objective: Objective, optimizer: optax.GradientTransformation,
                 mesh: Mesh, *, base_state, weights: dict, schedule: Callable | None = None,
                 rules=sharding.LOGICAL_AXIS_RULES):
        composition = dataclasses.replace(composition, activation_mesh=(mesh, rules))
        self.composition = composition
        self.optimizer = optimizer
        self.mesh = mesh
        self.rules = rules
        axes = composition.logical_axes(weights, base_state)
        weight_shardings = sharding.tree_shardings(axes, weights, mesh, rules)
        self.param_shardings, self.frozen_shardings = composition.split(weight_shardings)
        replicated = sharding.replicated(mesh)
        abstract_params = jax.eval_shape(lambda: composition.split(weights)[0])
        abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
        opt_shardings = optax.tree_map_params(optimizer, lambda _, s: s, abstract_opt, self.param_shardings,
                                              transform_non_params=lambda _: replicated)
        self.state_shardings = TrainState(step=replicated, params=self.param_shardings, opt_state=opt_shardings)
        self._step = jax.jit(
            make_train_step(composition, objective, optimizer, schedule),
            in_shardings=(self.state_shardings, self.frozen_shardings, None, replicated),
            out_shardings=(self.state_shardings, replicated),
            donate_argnums=(0,),
        )
        self._init_opt = jax.jit(optimizer.init, out_shardings=opt_shardings)
        self._copy_params = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=self.param_shardings)

    def place(self, weights: dict) -> tuple[TrainState, dict]:
        """Splits weights into a fresh TrainState and frozen weights, each on its sharding."""
        return self.init_state(weights), self.place_frozen(weights)

    def place_frozen(self, weights: dict) -> dict:
        return jax.device_put(self.composition.split(weights)[1], self.frozen_shardings)

    def place_weights(self, weights: dict) -> dict:
        """All weights (trained part included) on the shardings the step uses, for forward passes
        outside training such as scoring a reference."""
        params = jax.device_put(self.composition.split(weights)[0], self.param_shardings)
        return self.composition.combine(params, self.place_frozen(weights))

    def init_state(self, weights: dict) -> TrainState:
        # The state is donated to the step, so it must not share buffers with the caller's arrays
        # (device_put may reuse one for a replicated shard even with may_alias=False).
        params = self._copy_params(self.composition.split(weights)[0])
        return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), sharding.replicated(self.mesh)),
                          params=params, opt_state=self._init_opt(params))

    def abstract_state(self, weights: dict) -> TrainState:
        """Shapes, dtypes and shardings of the state, for restoring a checkpoint without building one."""
        shapes = jax.eval_shape(lambda w: self.init_state_shapes(w), weights)
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                            self.state_shardings)

    def init_state_shapes(self, weights: dict) -> TrainState:
        params = self.composition.split(weights)[0]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.optimizer.init(params))

    def put_batch(self, local_batch: dict) -> dict:
        """Host batch `[micro_batches, local_batch, ...]` -> global arrays sharded over the batch axis.

        Organism ids are checked here, on the host: inside the jitted step an id outside the stack
        would be silently clamped by the gather.
        """
        ids = local_batch.get("organism_ids")
        if ids is not None:
            for i, slot in enumerate(self.composition.adapters):
                if slot.num_slots is not None:
                    check_ids(ids, slot.num_slots, name=f"batch organism_ids (adapter {i})")
        return sharding.put_global_batch(local_batch, self.mesh, batch_axis=1, rules=self.rules)

    def step(self, state: TrainState, frozen: dict, batch: dict, rng: jax.Array):
        return self._step(state, frozen, batch, rng)

    def lower_step(self, state: TrainState, frozen: dict, batch: dict, rng: jax.Array):
        """The step lowered for these arguments' shapes and shardings (nothing runs, nothing is
        donated): what its compiled memory and cost analyses are read from."""
        return self._step.lower(state, frozen, batch, rng)
