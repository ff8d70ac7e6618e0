"""Defaults of the training command, importable without numpy or TensorFlow (the CLI's help)."""

DEFAULT_WINDOW = 50  # the most events a model reads; the recipe search may choose fewer
DEFAULT_BUDGET_S = 420.0  # wall-clock cap of the search and the refit together (a cap, not the budget)
SEARCH_SHARE = 0.5  # of that cap, what the search may use; the refit gets what is left
