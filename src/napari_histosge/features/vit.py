"""ViT encoders through timm: UNI, UNI2-h and any timm model, with safe strict weight loading."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from napari_histosge.base.device import resolve_device

from .base import HUB_WEIGHTS, RANDOM_WEIGHTS, file_sha256

#: The names the registry builds (kept in step with ``registry.ENCODERS``).
ENCODERS = ("histology", "uni", "uni2-h", "timm:<name>")

__all__ = ["ENCODERS", "TimmEncoder", "cpu_bf16_native", "load_state_dict"]


#: timm settings of UNI (Chen et al., Nature Medicine 2024; MahmoodLab/UNI model card).
_UNI_KWARGS: dict[str, Any] = {
    "model_name": "vit_large_patch16_224",
    "img_size": 224,
    "patch_size": 16,
    "init_values": 1e-5,
    "num_classes": 0,
    "dynamic_img_size": True,
}


_HUB_IDS = {"uni": "hf-hub:MahmoodLab/uni", "uni2-h": "hf-hub:MahmoodLab/UNI2-h"}


def _uni2h_kwargs() -> dict[str, Any]:
    """Return the timm settings of UNI2-h (MahmoodLab/UNI2-h model card)."""
    import timm
    import torch

    return {
        "model_name": "vit_giant_patch14_224",
        "img_size": 224,
        "patch_size": 14,
        "depth": 24,
        "num_heads": 24,
        "init_values": 1e-5,
        "embed_dim": 1536,
        "mlp_ratio": 2.66667 * 2,
        "num_classes": 0,
        "no_embed_class": True,
        "mlp_layer": timm.layers.SwiGLUPacked,
        "act_layer": torch.nn.SiLU,
        "reg_tokens": 8,
        "dynamic_img_size": True,
    }


def _strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """Drop a ``module.`` / ``model.`` / ``backbone.`` prefix shared by every key."""
    changed = True
    while changed and state:
        changed = False
        for prefix in ("module.", "model.", "backbone.", "encoder."):
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """Load a state dict safely (safetensors, or ``torch.load(weights_only=True)``).

    Wrappers such as ``{"state_dict": ...}`` or ``{"model": ...}`` are unpacked and a prefix
    shared by every key (``module.``, ``model.``, ...) is stripped. Pickled Python objects are
    never executed.

    Parameters
    ----------
    path
        A ``.safetensors``, ``.pth``, ``.pt`` or ``.bin`` file.

    Returns
    -------
    Parameter name to tensor.

    Raises
    ------
    ValueError
        Naming the file, when it is missing, unreadable or not a dict of tensors.

    Examples
    --------
    >>> load_state_dict("missing.pth")  # doctest: +SKIP
    ValueError: Expected a weights file at `missing.pth`, found nothing there.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"Expected a weights file at `{p}`, found nothing there.")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(p))
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any parse failure means a corrupt or foreign file
        raise ValueError(
            f"Expected a readable weights file (.safetensors, .pth, .bin) at `{p}`, found a "
            f"corrupt or unsupported file: {type(err).__name__}: {str(err)[:200]}"
        ) from err
    for wrapper in ("state_dict", "model", "model_state_dict", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise ValueError(
            f"Expected a dict of tensors in `{p}`, found {type(state).__name__}"
            + (f" with keys {list(state)[:5]}." if isinstance(state, dict) else ".")
        )
    return _strip_prefixes({str(k): v for k, v in state.items()})


def _load_into(model: Any, path: str | Path, expected: str, *, assign: bool = False) -> None:
    """Load ``path`` into ``model`` strictly; a ValueError summarises any mismatch."""
    state = load_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"Expected weights for {expected} in `{path}`, found another architecture: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected keys "
            f"(e.g. {unexpected[:3]}), {len(shapes)} shape mismatches (e.g. {shapes[:2]})."
        )
    model.load_state_dict(state, strict=True, assign=assign)


def _create_random(model_name: str, kwargs: dict[str, Any]) -> Any:
    """Untrained model with timm's own initialisation, seeded (the same weights every time).

    The global torch random state is left as it was.
    """
    import timm
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return timm.create_model(model_name, pretrained=False, **kwargs)


def _create_loaded(model_name: str, kwargs: dict[str, Any], path: Path, expected: str) -> Any:
    """Model with the weights of ``path``, built without a random init when possible.

    The model is first built on the ``meta`` device and the checked weights assigned to it; if
    any parameter or buffer is not covered by the file (e.g. non-persistent buffers), it is
    built normally and loaded instead.
    """
    import timm
    import torch

    try:
        with torch.device("meta"):
            model = timm.create_model(model_name, pretrained=False, **kwargs)
    except Exception:  # noqa: BLE001 - some models cannot be built on meta: build normally
        model = None
    if model is not None:
        _load_into(model, path, expected, assign=True)
        tensors = [*model.parameters(), *model.buffers()]
        if not any(t.is_meta for t in tensors):
            return model
    model = timm.create_model(model_name, pretrained=False, **kwargs)
    _load_into(model, path, expected)
    return model


def cpu_bf16_native() -> bool:
    """Whether torch runs bf16 matrix products natively on this CPU (oneDNN's own test).

    Where it does not (e.g. AVX2 without AVX512-BF16 or AMX), bf16 is emulated and slower
    than float32. Unknown (an older torch): ``True``, so that a request for bf16 is kept.
    """
    import torch

    probe = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    try:
        return True if probe is None else bool(probe())
    except RuntimeError:
        return True


class TimmEncoder:
    """A timm image model used as a patch encoder (UNI, UNI2-h or any ``timm:<name>``).

    Parameters
    ----------
    name
        ``"uni"``, ``"uni2-h"`` or ``"timm:<model name>"``.
    weights
        A local ``.safetensors``/``.pth``/``.bin`` file; ``"random"`` for an untrained network
        (benchmarks); ``"hub"`` to download pretrained weights (Hugging Face / timm; UNI and
        UNI2-h are gated and need an access token configured for ``huggingface_hub``).
    device
        Torch device; chosen automatically (cuda, mps, cpu) when ``None``.
    bf16
        bf16 autocast during inference (CPU or CUDA).
    batch_size
        Largest number of patches sent through the network at once.

    Examples
    --------
    >>> enc = TimmEncoder("timm:test_vit", weights="random")
    >>> enc.id
    'timm:test_vit@random'
    """

    def __init__(
        self,
        name: str,
        *,
        weights: str | Path | None = None,
        device: str | None = None,
        bf16: bool = False,
        batch_size: int = 32,
    ) -> None:
        import timm
        import torch

        self.name = name
        self.device = resolve_device(device)
        self.bf16 = bool(bf16)
        if self.bf16 and torch.device(self.device).type == "cpu" and not cpu_bf16_native():
            # Measured on an AVX2 CPU: ViT-L/16 takes 7.7 times the CPU time in bf16.
            warnings.warn(
                "bf16 was asked for, but this CPU has no bf16 units (torch's oneDNN reports "
                "none), where bf16 is several times slower: the encoder runs in float32.",
                UserWarning,
                stacklevel=2,
            )
            self.bf16 = False
        self.batch_size = max(1, int(batch_size))
        if name == "uni":
            kwargs = dict(_UNI_KWARGS)
        elif name == "uni2-h":
            kwargs = _uni2h_kwargs()
        elif name.startswith("timm:") and len(name) > 5:
            kwargs = {"model_name": name[5:], "num_classes": 0}
        else:
            raise ValueError(f"Expected an encoder among {list(ENCODERS)}, found `{name}`.")
        model_name = kwargs.pop("model_name")
        if not timm.is_model(model_name):
            raise ValueError(
                "Expected a timm model name (see `timm.list_models()`), "
                f"found unknown `{model_name}`."
            )
        if weights is None or str(weights) == "":
            raise ValueError(
                f"Expected weights for encoder `{name}`: a local .safetensors/.pth/.bin file, "
                f"'{HUB_WEIGHTS}' to download them, or '{RANDOM_WEIGHTS}' for an untrained "
                "network; found none. The built-in `histology` encoder needs no weights."
            )
        self.weights_path: Path | None = None
        #: Token tiles embedded so far, per image (see :mod:`.vit_tiles`).
        self.token_tiles_cache: list[Any] = []
        if str(weights) == HUB_WEIGHTS:
            model = self._from_hub(name, model_name, kwargs)
            self.weights_sha256: str | None = HUB_WEIGHTS
        elif str(weights) == RANDOM_WEIGHTS:
            model = _create_random(model_name, kwargs)
            self.weights_sha256 = RANDOM_WEIGHTS
        else:
            path = Path(weights)
            if not path.is_file():
                raise ValueError(
                    f"Expected a weights file for `{name}` at `{path}`, found nothing there."
                )
            model = _create_loaded(model_name, kwargs, path, f"`{name}` (timm `{model_name}`)")
            self.weights_sha256 = file_sha256(path)
            self.weights_path = path
        model.eval().to(self.device)
        self.model = model
        self.model_name = model_name
        cfg = timm.data.resolve_model_data_config(model)
        self.input_size = int(cfg["input_size"][-1])
        self.mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self.dim = int(getattr(model, "num_features", 0) or model.embed_dim)

    @staticmethod
    def _from_hub(name: str, model_name: str, kwargs: dict[str, Any]) -> Any:
        """Pretrained weights from the Hugging Face hub (only when explicitly asked for)."""
        import timm

        hub = _HUB_IDS.get(name)
        try:
            if hub is not None:
                return timm.create_model(hub, pretrained=True, **kwargs)
            return timm.create_model(model_name, pretrained=True, **kwargs)
        except Exception as err:  # noqa: BLE001 - offline or gated: say what to do instead
            raise ValueError(
                f"Expected to download weights for `{name}` ({hub or model_name}), found the hub "
                f"unreachable or the model gated ({type(err).__name__}: {str(err)[:200]}); pass "
                "a local weights file instead."
            ) from err

    @property
    def id(self) -> str:
        """Encoder id: name and the first 12 hex digits of the weights checksum."""
        sha = self.weights_sha256 or "none"
        return f"{self.name}@{sha[:12]}"

    def embed(self, patches: np.ndarray) -> np.ndarray:
        """Embed ``(n, h, w, 3)`` uint8 RGB patches (resized to the model's input).

        Returns
        -------
        ``(n, dim)`` float32 (the pre-logits features, e.g. the class token for UNI).
        """
        import torch

        arr = np.asarray(patches)
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"Expected (n, h, w, 3) uint8 RGB patches, found shape {arr.shape}.")
        if len(arr) == 0:
            return np.zeros((0, self.dim), np.float32)
        dev_type = torch.device(self.device).type
        use_bf16 = self.bf16 and dev_type in ("cpu", "cuda")
        outs = []
        with torch.inference_mode():
            for start in range(0, len(arr), self.batch_size):
                chunk = arr[start : start + self.batch_size]
                x = torch.from_numpy(np.ascontiguousarray(chunk)).permute(0, 3, 1, 2).float()
                x = x / 255.0
                if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
                    x = torch.nn.functional.interpolate(
                        x, size=(self.input_size, self.input_size), mode="bicubic", antialias=True
                    ).clamp_(0.0, 1.0)
                x = ((x - self.mean) / self.std).to(self.device)
                if use_bf16 and dev_type == "cpu":
                    # bf16 weights run faster than autocast on CPUs with bf16 units (measured:
                    # ViT-L/16 6.0 vs 5.1 patches/s on 2 cores; bench/throughput.py).
                    if next(self.model.parameters()).dtype != torch.bfloat16:
                        self.model.to(torch.bfloat16)
                    out = self.model.forward_head(
                        self.model.forward_features(x.to(torch.bfloat16)), pre_logits=True
                    )
                else:
                    with torch.autocast(
                        device_type=dev_type, dtype=torch.bfloat16, enabled=use_bf16
                    ):
                        out = self.model.forward_head(
                            self.model.forward_features(x), pre_logits=True
                        )
                outs.append(out.float().cpu().numpy())
        return np.concatenate(outs, axis=0).astype(np.float32, copy=False)
