"""Data feeding: fixed-shape, restartable batches."""
