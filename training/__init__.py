"""History, labels, models, training, evaluation and the model registry."""
