"""Model organisms: many LoRA organisms trained in one job over one base."""
