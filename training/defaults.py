"""Defaults of the training command, importable without numpy or TensorFlow (the CLI's help)."""

DEFAULT_WINDOW = 50  # the most events a model reads, and what the state keeps; the search may choose fewer
# the silences churn is trained on, and (within the churn horizon) the ones serving scores at
SILENCE_MARKS_DAYS = (7, 14, 30, 60, 90, 120, 180)
DEFAULT_BUDGET_S = 420.0  # wall-clock cap of the search and the refit together (a cap, not the budget)
SEARCH_SHARE = 0.5  # of that cap, what the search may use; the refit gets what is left
