"""Sampling: batched, cached, bucketed generation."""
