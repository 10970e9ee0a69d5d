"""Model builders: a registry of named variants over timm (see :mod:`medray.models.registry`)."""

from medray.models.registry import create_model, is_model, list_models, load_weights, register_model

__all__ = ["create_model", "is_model", "list_models", "load_weights", "register_model"]
