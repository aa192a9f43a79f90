"""Monitoring: how the data a model scores drifts from the data it was trained on."""
