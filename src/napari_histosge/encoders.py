"""Patch encoders: the built-in histology statistics, UNI, UNI2-h and any timm model."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ENCODERS",
    "HistologyEncoder",
    "TimmEncoder",
    "file_sha256",
    "get_encoder",
    "load_state_dict",
    "resolve_device",
]

ENCODERS = ("histology", "uni", "uni2-h", "timm:<name>")

#: timm settings of the UNI family (Chen et al., Nature Medicine 2024; model cards of UNI / UNI2-h).
_UNI_KWARGS: dict[str, Any] = {
    "model_name": "vit_large_patch16_224",
    "img_size": 224,
    "patch_size": 16,
    "init_values": 1e-5,
    "num_classes": 0,
    "dynamic_img_size": True,
}


def _uni2h_kwargs() -> dict[str, Any]:
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


_HUB_IDS = {"uni": "hf-hub:MahmoodLab/uni", "uni2-h": "hf-hub:MahmoodLab/UNI2-h"}


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file, read in chunks.

    Examples
    --------
    >>> len(file_sha256(__file__))
    64
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


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


# --------------------------------------------------------------------------------------------
# Built-in histology encoder


class HistologyEncoder:
    """Weight-free features: colour, H&E stain and texture statistics at several scales.

    Per-pixel maps are computed once over the tissue at about 2 µm per pixel: RGB, the
    haematoxylin, eosin and DAB channels after colour deconvolution (``skimage.color.rgb2hed``),
    grey level, gradient magnitude, two difference-of-Gaussians responses of the haematoxylin
    channel (nuclei-sized blobs) and a tissue indicator. Any position and patch size is then
    pooled from summed-area tables, so overlapping patches (4x positions, dense grids) cost
    almost nothing more. Each patch gives the means of all maps and the standard deviations of
    four, i.e. :attr:`dim_per_scale` values per scale.

    Examples
    --------
    >>> enc = HistologyEncoder()
    >>> enc.embed(np.full((2, 32, 32, 3), 200, np.uint8)).shape
    (2, 15)
    """

    name = "histology"
    version = "v1"
    input_size = 224
    weights_sha256: str | None = None
    channels = ("r", "g", "b", "h", "e", "d", "grey", "grad", "dog_fine", "dog_coarse", "tissue")
    squared = ("h", "e", "grey", "grad")
    dim_per_scale = len(channels) + len(squared)
    work_um_per_px = 2.0
    pool_um_per_px = 4.0

    def __init__(self) -> None:
        self._maps: dict[tuple[Any, ...], tuple[np.ndarray, float, tuple[int, int]]] = {}

    @property
    def id(self) -> str:
        """Encoder id used in cache keys and checkpoints."""
        return f"histology@{self.version}"

    @property
    def dim(self) -> int:
        """Feature width of one patch size."""
        return self.dim_per_scale

    def pixel_maps(self, rgb: np.ndarray, px_um: float) -> np.ndarray:
        """Per-pixel maps ``(C, y, x)`` of an RGB tile with ``px_um`` µm per pixel."""
        from scipy import ndimage
        from skimage.color import rgb2hed

        x = rgb.astype(np.float32) / 255.0
        hed = rgb2hed(x).astype(np.float32)
        grey = x.mean(axis=2)
        gx = ndimage.sobel(grey, axis=1)
        gy = ndimage.sobel(grey, axis=0)
        grad = np.hypot(gx, gy)
        h = hed[..., 0]
        s1 = max(0.5, 3.0 / px_um)  # ~ nucleus radius
        g1 = ndimage.gaussian_filter(h, s1)
        dog_fine = g1 - ndimage.gaussian_filter(h, 2 * s1)
        dog_coarse = ndimage.gaussian_filter(h, 2 * s1) - ndimage.gaussian_filter(h, 4 * s1)
        sat = x.max(axis=2) - x.min(axis=2)
        tissue = ((sat > 0.07) | (grey < 0.75)).astype(np.float32)
        maps = [x[..., 0], x[..., 1], x[..., 2], hed[..., 0], hed[..., 1], hed[..., 2], grey,
                grad, dog_fine, dog_coarse, tissue]
        named = dict(zip(self.channels, maps, strict=True))
        maps += [named[k] ** 2 for k in self.squared]
        return np.stack(maps).astype(np.float32)

    def _stats(self, means: np.ndarray) -> np.ndarray:
        """Turn pooled means ``(..., C + S)`` into features: means and standard deviations."""
        n_c = len(self.channels)
        base = means[..., :n_c]
        idx = [self.channels.index(k) for k in self.squared]
        var = np.maximum(means[..., n_c:] - base[..., idx] ** 2, 0.0)
        return np.concatenate([base, np.sqrt(var)], axis=-1).astype(np.float32)

    def embed(self, patches: np.ndarray) -> np.ndarray:
        """Features of whole patches ``(n, h, w, 3)`` uint8 (one scale per call)."""
        out = []
        for p in np.asarray(patches):
            maps = self.pixel_maps(p, self.work_um_per_px)
            out.append(maps.reshape(maps.shape[0], -1).mean(axis=1))
        return self._stats(np.stack(out))

    def dense_features(
        self,
        image: Any,
        centers_px: np.ndarray,
        sizes_px: Sequence[float],
        um_per_px: float,
        *,
        extent: tuple[float, float, float, float] | None = None,
        key: Any = None,
    ) -> np.ndarray:
        """Features at ``centers_px`` for each patch size, pooled from cached dense maps.

        Parameters
        ----------
        image
            ``(c, y, x)`` DataArray or multiscale DataTree.
        centers_px
            ``(n, 2)`` positions in scale-0 pixels.
        sizes_px
            Patch sides in scale-0 pixels.
        um_per_px
            Scale-0 resolution.
        extent
            ``(x0, y0, x1, y1)`` region, in scale-0 pixels, over which maps are computed (the
            whole image when ``None``); calls with the same extent reuse the maps.
        key
            Identifies the image in the in-memory cache (``id(image)`` by default).

        Returns
        -------
        ``(n, len(sizes_px) * dim_per_scale)`` float32.
        """
        centers = np.atleast_2d(np.asarray(centers_px, dtype=float))
        maps, down, origin = self._dense_maps(image, um_per_px, extent=extent, key=key)
        _, hm, wm = maps.shape
        feats = []
        for size in sizes_px:
            half = size / (2.0 * down)
            cx = centers[:, 0] / down - origin[0]
            cy = centers[:, 1] / down - origin[1]
            x0 = np.clip(np.floor(cx - half).astype(int), 0, wm - 1)
            x1 = np.clip(np.ceil(cx + half).astype(int), x0 + 1, wm)
            y0 = np.clip(np.floor(cy - half).astype(int), 0, hm - 1)
            y1 = np.clip(np.ceil(cy + half).astype(int), y0 + 1, hm)
            pooled = np.stack(
                [maps[:, a:b, c:d].mean(axis=(1, 2)) for a, b, c, d in zip(y0, y1, x0, x1, strict=True)]
            )
            feats.append(self._stats(pooled))
        return np.concatenate(feats, axis=1)

    def _dense_maps(
        self,
        image: Any,
        um_per_px: float,
        *,
        extent: tuple[float, float, float, float] | None,
        key: Any,
    ) -> tuple[np.ndarray, float, tuple[float, float]]:
        from .io import image_levels
        from .patches import choose_level, level_scales, read_region

        ext = None if extent is None else tuple(round(float(v), 1) for v in extent)
        cache_key = (key if key is not None else id(image), round(um_per_px, 6), ext)
        if cache_key in self._maps:
            return self._maps[cache_key]
        idx = choose_level(image, self.work_um_per_px / um_per_px)
        level = image_levels(image)[idx]
        ds = level_scales(image)[idx]
        px_um = um_per_px * ds
        bin_f = max(1, int(round(self.pool_um_per_px / px_um)))
        h, w = level.sizes["y"], level.sizes["x"]
        if ext is None:
            lx0, ly0, lx1, ly1 = 0, 0, w, h
        else:
            lx0 = max(0, int(np.floor(ext[0] / ds)))
            ly0 = max(0, int(np.floor(ext[1] / ds)))
            lx1 = min(w, int(np.ceil(ext[2] / ds)))
            ly1 = min(h, int(np.ceil(ext[3] / ds)))
        hb, wb = max(1, (ly1 - ly0) // bin_f), max(1, (lx1 - lx0) // bin_f)
        n_ch = len(self.channels) + len(self.squared)
        maps = np.zeros((n_ch, hb, wb), dtype=np.float32)
        tile = max(bin_f, 2048 // bin_f * bin_f)
        pad = 32 * bin_f
        for ty in range(0, hb * bin_f, tile):
            for tx in range(0, wb * bin_f, tile):
                y1 = min(ty + tile, hb * bin_f)
                x1 = min(tx + tile, wb * bin_f)
                region = read_region(level, lx0 + tx - pad, ly0 + ty - pad, lx0 + x1 + pad, ly0 + y1 + pad)
                m = self.pixel_maps(region, px_um)[:, pad:-pad, pad:-pad]
                m = m.reshape(n_ch, (y1 - ty) // bin_f, bin_f, (x1 - tx) // bin_f, bin_f)
                maps[:, ty // bin_f : y1 // bin_f, tx // bin_f : x1 // bin_f] = m.mean(axis=(2, 4))
        down = ds * bin_f
        # Map cell (0, 0) covers scale-0 pixels starting at (lx0, ly0) * ds.
        result = (maps, down, (lx0 * ds / down, ly0 * ds / down))
        self._maps = {cache_key: result}
        return result


# --------------------------------------------------------------------------------------------
# Weight loading


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """Load a state dict safely (safetensors, or ``torch.load(weights_only=True)``).

    Raises ``ValueError`` naming the file when it is missing, unreadable or not a state dict.
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
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise ValueError(f"Expected a dict of tensors in `{p}`, found {type(state).__name__}.")
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "model."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def _load_into(model: Any, path: str | Path, expected: str) -> None:
    state = load_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"Expected weights for {expected} in `{path}`, found another architecture: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected keys "
            f"(e.g. {unexpected[:3]}), {len(shapes)} shape mismatches (e.g. {shapes[:2]})."
        )
    model.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------------------------
# timm encoders


class TimmEncoder:
    """A timm image model used as a patch encoder (UNI, UNI2-h or any ``timm:<name>``).

    Examples
    --------
    >>> enc = TimmEncoder("timm:test_vit", weights="random")  # doctest: +SKIP
    """

    def __init__(
        self,
        name: str,
        *,
        weights: str | None = None,
        device: str | None = None,
        bf16: bool = False,
    ) -> None:
        import timm
        import torch

        self.name = name
        self.device = resolve_device(device)
        self.bf16 = bool(bf16)
        if name == "uni":
            kwargs = dict(_UNI_KWARGS)
        elif name == "uni2-h":
            kwargs = _uni2h_kwargs()
        elif name.startswith("timm:") and len(name) > 5:
            kwargs = {"model_name": name[5:], "num_classes": 0}
        else:
            raise ValueError(f"Expected an encoder among {list(ENCODERS)}, found `{name}`.")
        model_name = kwargs.pop("model_name")
        if model_name not in timm.list_models() and not timm.is_model(model_name):
            raise ValueError(f"Expected a timm model name, found unknown `{model_name}`.")
        if weights is None:
            # Hub weights when reachable (UNI and UNI2-h are gated: a token must be configured).
            hub = _HUB_IDS.get(name)
            try:
                if hub is not None:
                    model = timm.create_model(hub, pretrained=True, **kwargs)
                else:
                    model = timm.create_model(model_name, pretrained=True, **kwargs)
            except Exception as err:  # noqa: BLE001 - offline or gated: say what to do instead
                raise ValueError(
                    f"Expected to download weights for `{name}`, found the hub unreachable or "
                    f"the model gated ({type(err).__name__}); pass a local weights file, or "
                    "weights='random' for an untrained network."
                ) from err
            self.weights_sha256: str | None = "hub"
        else:
            model = timm.create_model(model_name, pretrained=False, **kwargs)
            if weights == "random":
                self.weights_sha256 = "random"
            else:
                _load_into(model, weights, f"`{name}` ({model_name})")
                self.weights_sha256 = file_sha256(weights)
        model.eval().to(self.device)
        self.model = model
        cfg = timm.data.resolve_model_data_config(model)
        self.input_size = int(cfg["input_size"][-1])
        self.mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self.dim = int(getattr(model, "num_features", 0) or model.embed_dim)

    @property
    def id(self) -> str:
        """Encoder id: name and weights checksum."""
        sha = self.weights_sha256 or "none"
        return f"{self.name}@{sha[:12]}"

    def embed(self, patches: np.ndarray) -> np.ndarray:
        """Embed ``(n, h, w, 3)`` uint8 RGB patches (resized to the model's input)."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = torch.nn.functional.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True
            )
        x = ((x - self.mean) / self.std).to(self.device)
        dev_type = "cuda" if self.device.startswith("cuda") else "cpu"
        with torch.inference_mode(), torch.autocast(
            device_type=dev_type, dtype=torch.bfloat16, enabled=self.bf16
        ):
            out = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return out.float().cpu().numpy()


def get_encoder(
    name: str = "histology",
    *,
    weights: str | None = None,
    device: str | None = None,
    bf16: bool = False,
) -> HistologyEncoder | TimmEncoder:
    """Build an encoder from the registry.

    Parameters
    ----------
    name
        ``"histology"`` (built in, weight-free, the default), ``"uni"``, ``"uni2-h"`` or
        ``"timm:<model name>"``.
    weights
        A local ``.safetensors``/``.pth``/``.bin`` file, ``"random"`` for untrained weights, or
        ``None`` to try the hub.
    device
        ``"cpu"``, ``"cuda"``, ``"mps"``; chosen automatically when ``None``.
    bf16
        bf16 autocast during inference.

    Examples
    --------
    >>> get_encoder().id
    'histology@v1'
    """
    if name == "histology":
        if weights not in (None, ""):
            raise ValueError("Expected no weights for the built-in `histology` encoder, found some.")
        return HistologyEncoder()
    return TimmEncoder(name, weights=weights, device=device, bf16=bf16)
