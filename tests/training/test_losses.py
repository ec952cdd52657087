"""Losses against hand computations on small fixed cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ia_jax.training import losses


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    return x - np.log(np.sum(np.exp(x - x.max(-1, keepdims=True)), -1, keepdims=True)) - x.max(-1, keepdims=True)


def test_sft_loss_is_mean_nll_over_assistant_targets():
    logits = np.array([[[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]]], np.float32)
    tokens = np.array([[0, 1, 2, 0]], np.int32)
    loss_mask = np.array([[0, 1, 0, 1]], np.int32)  # targets 1 (from pos 0) and 0 (from pos 2) count
    lp = _log_softmax(logits)
    expected = -(lp[0, 0, 1] + lp[0, 2, 0]) / 2
    loss, metrics = losses.sft_loss(jnp.asarray(logits), tokens, loss_mask)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    # argmax at pos 0 is 0 (target 1: miss); at pos 2 is 2 (target 0: miss)
    assert float(metrics["token_accuracy"]) == 0.0
    _, metrics = losses.sft_loss(jnp.asarray(logits), np.array([[0, 0, 2, 2]], np.int32), loss_mask)
    assert float(metrics["token_accuracy"]) == 1.0


def test_sft_loss_gradient_is_softmax_minus_one_hot_over_counted_positions():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (2, 5, 7)).astype(np.float32)
    tokens = rng.integers(0, 7, (2, 5)).astype(np.int32)
    loss_mask = np.array([[0, 1, 1, 0, 1], [1, 0, 1, 1, 1]], np.int32)
    counted = loss_mask[:, 1:].astype(np.float64)
    probs = np.exp(_log_softmax(logits[:, :-1]))
    one_hot = np.eye(7)[tokens[:, 1:]]
    expected = np.zeros(logits.shape)
    expected[:, :-1] = (probs - one_hot) * counted[..., None] / counted.sum()
    grad = jax.grad(lambda x: losses.sft_loss(x, tokens, loss_mask)[0])(jnp.asarray(logits))
    np.testing.assert_allclose(grad, expected, atol=1e-6)


def _dpo_by_hand(pc, pr, rc, rr, beta, eps):
    logit = beta * ((pc - rc) - (pr - rr))
    log_sig = lambda z: -np.log1p(np.exp(-z))  # noqa: E731
    return -(1 - eps) * log_sig(logit) - eps * log_sig(-logit)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_dpo_loss_and_gradient_match_hand_computation(label_smoothing):
    pc = np.array([-3.0, -5.0, -2.0]); pr = np.array([-4.0, -4.5, -6.0])  # noqa: E702
    rc = np.array([-3.5, -5.0, -2.5]); rr = np.array([-3.8, -4.0, -5.0])  # noqa: E702
    beta = 0.2
    per_pair = _dpo_by_hand(pc, pr, rc, rr, beta, label_smoothing)
    loss, metrics = losses.dpo_loss(jnp.asarray(pc), jnp.asarray(pr), jnp.asarray(rc), jnp.asarray(rr), beta=beta,
                                    label_smoothing=label_smoothing)
    np.testing.assert_allclose(loss, per_pair.mean(), rtol=1e-6)
    margins = beta * ((pc - rc) - (pr - rr))
    np.testing.assert_allclose(metrics["reward_margin"], margins.mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["chosen_reward"], (beta * (pc - rc)).mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["rejected_reward"], (beta * (pr - rr)).mean(), rtol=1e-6)
    assert float(metrics["preference_accuracy"]) == pytest.approx(np.mean(margins > 0))
    # d/d pc of mean loss: -(beta/n) [(1-e) sigmoid(-m) - e sigmoid(m)]
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    expected_grad = -(beta / 3) * ((1 - label_smoothing) * sig(-margins) - label_smoothing * sig(margins))
    grad = jax.grad(lambda x: losses.dpo_loss(x, jnp.asarray(pr), jnp.asarray(rc), jnp.asarray(rr), beta=beta,
                                              label_smoothing=label_smoothing)[0])(jnp.asarray(pc))
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5)
    np.testing.assert_allclose(jax.grad(lambda x: losses.dpo_loss(jnp.asarray(pc), jnp.asarray(pr), jnp.asarray(rc),
                                                                  x, beta=beta, label_smoothing=label_smoothing)[0])(
        jnp.asarray(rr)), expected_grad, rtol=1e-5)


def test_sequence_log_probs_sum_completion_tokens_only():
    logits = np.random.RandomState(0).randn(2, 4, 5).astype(np.float32)
    tokens = np.array([[1, 2, 3, 4], [0, 0, 1, 1]], np.int32)
    completion = np.array([[0, 0, 1, 1], [0, 1, 1, 0]], np.int32)
    lp = _log_softmax(logits)
    expected = [lp[0, 1, 3] + lp[0, 2, 4], lp[1, 0, 0] + lp[1, 1, 1]]
    np.testing.assert_allclose(losses.sequence_log_probs(jnp.asarray(logits), tokens, completion), expected,
                               rtol=1e-5)
