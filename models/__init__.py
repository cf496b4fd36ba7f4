"""The book's layers and architectures as pure ``nn.Module``s (imports torch only).

Use :func:`models.create_model` with a name from :data:`models.MODELS`.
"""
from models.registry import MODELS, config_class, create_model

__all__ = ["MODELS", "config_class", "create_model"]
