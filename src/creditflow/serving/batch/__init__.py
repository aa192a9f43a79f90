"""Batch prediction on Spark: plan, Spark session, columns, the job, the prediction table."""
