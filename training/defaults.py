"""Defaults of the training command, importable without numpy or TensorFlow (the CLI's help)."""

DEFAULT_WINDOW = 50  # the most events a model reads; the recipe search may choose fewer
DEFAULT_BUDGET_S = 180.0  # wall-clock cap of the recipe search: a cap for slow machines, not the budget
