"""Models logged before the package layout name `creditflow.pipeline.CreditFeatures` in their skops file."""

from creditflow.model.pipeline import CreditFeatures

__all__ = ["CreditFeatures"]
