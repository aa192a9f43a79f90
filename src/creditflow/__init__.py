"""creditflow: an MLflow-centred experiment-to-serving platform for credit-risk models."""

__version__ = "0.1.0"
