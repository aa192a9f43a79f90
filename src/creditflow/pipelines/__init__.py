"""Pipelines: the `main` demo, end to end over the layers below."""
