"""Serving layer: one request schema, the batching engine, response documents, video jobs, the
gRPC server, the browser page and settings. ``service.py`` imports only this package."""
