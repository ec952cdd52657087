"""Hash-based dropout masks keep the right share, scale survivors, and are independent across keys."""

import jax
import numpy as np

from ia_jax.lora.dropout import dropout, keep_mask

SHAPE = (4, 64, 256)


def test_keep_share_is_binomial_and_masks_are_uncorrelated_across_keys():
    masks = np.stack([np.asarray(keep_mask(jax.random.key(i), SHAPE, 0.95)).ravel() for i in range(12)])
    n = masks.shape[1]
    share = masks.mean(axis=1)
    assert np.all(np.abs(share - 0.95) < 5 * np.sqrt(0.95 * 0.05 / n))
    correlations = np.corrcoef(masks.astype(np.float64))[np.triu_indices(len(masks), 1)]
    # Independent masks: each correlation is about N(0, 1/n); 66 pairs, so 5 sigma has no false alarms.
    assert np.abs(correlations).max() < 5 / np.sqrt(n)
    # Neighbouring elements of one mask are independent too (the hash must not leak the index).
    assert abs(np.corrcoef(masks[0, :-1], masks[0, 1:])[0, 1]) < 5 / np.sqrt(n)


def test_same_key_same_mask_and_survivors_are_scaled():
    x = jax.random.normal(jax.random.key(0), SHAPE)
    key = jax.random.key(3)
    dropped = np.asarray(dropout(x, key, 0.25))
    np.testing.assert_array_equal(dropped, np.asarray(dropout(x, key, 0.25)))
    kept = np.asarray(keep_mask(key, SHAPE, 0.75))
    np.testing.assert_allclose(dropped[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
    assert np.all(dropped[~kept] == 0)
    assert not np.array_equal(kept, np.asarray(keep_mask(jax.random.key(4), SHAPE, 0.75)))
