"""Phase 2: the introspection adapter, trained across organisms (SFT) and refined on held-out ones (DPO)."""
