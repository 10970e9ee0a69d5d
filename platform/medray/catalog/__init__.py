"""The model catalogue: cards (:mod:`medray.catalog.card`) and their store on any storage URI
(:mod:`medray.catalog.store`). No Ray Serve and no torch here: serving loads what this describes.

    >>> from medray.catalog import Catalog
    >>> cat = Catalog("s3://bucket/catalog")
    >>> card = cat.get("fundus_dr@production")
    >>> weights_path = cat.local_path(card)       # verified against card.checksum
"""

from medray.catalog.card import CatalogError, FileRef, ModelCard, parse_input
from medray.catalog.store import Catalog

__all__ = ["Catalog", "CatalogError", "FileRef", "ModelCard", "parse_input"]
