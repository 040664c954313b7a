"""Torch device choice."""

from __future__ import annotations

__all__ = ["check_device", "resolve_device"]


def resolve_device(device: str | None = None) -> str:
    """``device`` if given, else ``"cuda"``, ``"mps"`` or ``"cpu"``, whichever is available.

    Examples
    --------
    >>> resolve_device("cpu")
    'cpu'
    """
    if device:
        return str(device)
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def check_device(device: str | None) -> None:
    """Raise ``ValueError`` unless ``device`` is ``None`` or a torch device available here.

    Examples
    --------
    >>> check_device("cpu")
    """
    if not device:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ValueError(
            f"Expected --device cpu, cuda, cuda:N or mps, found `{device}` ({err})."
        ) from err
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index is not None and dev.index >= n):
            raise ValueError(
                f"Expected a CUDA GPU for --device {device}, found {n} usable; use --device cpu "
                "or leave --device out to pick the best available device."
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(
                f"Expected an Apple GPU for --device {device}, found none; use --device cpu."
            )
    elif dev.type != "cpu":
        raise ValueError(f"Expected --device cpu, cuda, cuda:N or mps, found `{device}`.")
