"""Data: manifests, decoding, ingest of public layouts, generators, validation, Ray Data pipelines."""
