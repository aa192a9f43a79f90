"""Training: search (grid, Bayesian), metrics, explanation artifacts, logging the model, the MLflow run."""
