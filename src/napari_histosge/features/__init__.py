"""Image features: lazy patches, encoders behind one protocol and a registry, the cache.

* :mod:`.patches`: patches cut lazily from a multiscale image;
* :mod:`.registry`: :func:`get_encoder` (``histology``, ``uni``, ``uni2-h``, ``timm:<name>``)
  and the :class:`~.registry.Encoder` protocol; :mod:`.histology` and :mod:`.vit` implement it;
* :mod:`.extract`: :func:`iter_extract_features`; :mod:`.cache`: features kept in the store.
"""

from __future__ import annotations

from .extract import DEFAULT_PATCH_SIZES, FeatureSet, extract_features, iter_extract_features
from .registry import ENCODERS, Encoder, get_encoder

__all__ = [
    "DEFAULT_PATCH_SIZES",
    "ENCODERS",
    "Encoder",
    "FeatureSet",
    "extract_features",
    "get_encoder",
    "iter_extract_features",
]
