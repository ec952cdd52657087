"""Losses, optimizer, the jitted train step and checkpoints, shared by every training stage."""
