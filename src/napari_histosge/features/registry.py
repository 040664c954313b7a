"""The encoder registry: names to factories.

``histology`` is built in and needs no weights; ``uni``, ``uni2-h`` and ``timm:<name>`` are ViTs
through timm (:mod:`.vit`). Every encoder follows :class:`~.base.Encoder`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .base import Encoder
from .histology import HistologyEncoder
from .vit import TimmEncoder

__all__ = ["ENCODERS", "Encoder", "get_encoder"]

#: Names accepted by :func:`get_encoder`.
ENCODERS = ("histology", "uni", "uni2-h", "timm:<name>")

_Factory = Callable[[str, "str | Path | None", "str | None", bool], Encoder]


def _histology(name: str, weights: str | Path | None, device: str | None, bf16: bool) -> Encoder:
    if weights not in (None, ""):
        raise ValueError(
            f"Expected no weights for the built-in `histology` encoder, found `{weights}`."
        )
    return HistologyEncoder()


def _timm(name: str, weights: str | Path | None, device: str | None, bf16: bool) -> Encoder:
    return TimmEncoder(name, weights=weights, device=device, bf16=bf16)


_FACTORIES: dict[str, _Factory] = {"histology": _histology, "uni": _timm, "uni2-h": _timm}


def get_encoder(
    name: str = "histology",
    *,
    weights: str | Path | None = None,
    device: str | None = None,
    bf16: bool = False,
) -> Encoder:
    """Build an encoder from the registry.

    Parameters
    ----------
    name
        ``"histology"`` (built in, weight-free, the default), ``"uni"`` (timm ViT-L/16,
        1024-d), ``"uni2-h"`` (timm ViT-g/14 with registers, 1536-d) or ``"timm:<model name>"``.
    weights
        For ViT encoders: a local ``.safetensors``/``.pth``/``.bin`` file (loaded safely and
        strictly), ``"random"`` for untrained weights, or ``"hub"`` to download (never done
        unless asked). Must be ``None`` for ``histology``.
    device
        ``"cpu"``, ``"cuda"``, ``"mps"``; chosen automatically when ``None``.
    bf16
        bf16 autocast during inference.

    Returns
    -------
    The encoder.

    Examples
    --------
    >>> get_encoder().id
    'histology@v2'
    >>> get_encoder("timm:test_vit", weights="random", device="cpu").dim
    64
    """
    factory = _FACTORIES.get(name, _timm)
    return factory(name, weights, device, bf16)
