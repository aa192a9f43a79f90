"""Models-from-code entry: MLflow runs this file to build the served model (see creditflow.model.pyfunc)."""

import mlflow

from creditflow.model.pyfunc import CreditModel

mlflow.models.set_model(CreditModel())
