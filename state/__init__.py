"""Per-customer state and the sequence encoding shared by serving and training."""
