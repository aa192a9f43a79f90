"""Serving: the online endpoint, requests, the feature store, the stream scorer and the batch job."""
