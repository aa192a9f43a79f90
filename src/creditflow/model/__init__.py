"""The model: everything that travels inside the logged artifact (pipeline, compiled scorer, SHAP, checks, pyfunc).

Models logged before the package layout import `creditflow.model.CreditModel`: it stays importable here.
"""

from creditflow.model.pyfunc import CreditModel

__all__ = ["CreditModel"]
