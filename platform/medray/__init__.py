"""medray: train and serve medical-image models on Ray.

The import package lives under ``platform/medray``; ``platform/`` itself is only a source root
(it must never get an ``__init__.py``: that would shadow the standard library's ``platform``).
"""

__version__ = "0.1.0"
