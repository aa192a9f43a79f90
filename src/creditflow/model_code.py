"""Models-from-code entry: MLflow runs this file to build the served model (see creditflow.model)."""

import mlflow

from creditflow.model import CreditModel

mlflow.models.set_model(CreditModel())
