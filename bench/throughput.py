"""CPU throughput: bf16/fp32 matmul roofline beside the UNI architecture (timm ViT-L/16).

Measures, in one run and with the same thread settings:

* dense matmul GFLOP/s in fp32 and bf16 (square ``n x n`` and a ViT-L MLP-shaped GEMM),
* the UNI architecture (``vit_large_patch16_224``, ``init_values=1e-5``, ``dynamic_img_size=True``,
  ``num_classes=0``, random weights) in patches/s under several execution variants
  (fp32, bf16 autocast, bf16 weights, larger batches, TorchScript freeze, oneDNN graph fusion),
* the model's FLOPs per patch (``torch.utils.flop_counter.FlopCounterMode``), hence achieved
  GFLOP/s and the fraction of the measured bf16 matmul roofline,
* the package's encoders through ``napari_histosge.features.get_encoder`` when available.

Usage::

    .venv/bin/python bench/throughput.py            # full run (minutes)
    .venv/bin/python bench/throughput.py --quick    # tiny model, seconds
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
from _common import peak_rss_mb, run_metadata, write_json
from make_tables import throughput as render_throughput


def _timeit(fn: Callable[[], Any], *, min_time: float, min_reps: int, warmup: int = 1) -> dict:
    """Run ``fn`` ``warmup`` times, then until ``min_time`` s and ``min_reps`` reps have passed."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    t_end = time.perf_counter() + min_time
    while len(times) < min_reps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    arr = np.asarray(times)
    return {"reps": len(times), "best_s": float(arr.min()), "median_s": float(np.median(arr))}


def matmul_bench(
    shapes: list[tuple[int, int, int]],
    min_time: float,
    dtypes: tuple[str, ...] = ("float32", "bfloat16"),
) -> list[dict]:
    """GFLOP/s of ``(m,k) @ (k,n)`` in fp32 and bf16 (2mnk FLOPs per product)."""
    import torch

    rows = []
    for m, k, n in shapes:
        for dtype in (getattr(torch, d) for d in dtypes):
            a = torch.randn(m, k).to(dtype)
            b = torch.randn(k, n).to(dtype)
            with torch.inference_mode():
                t = _timeit(lambda a=a, b=b: torch.mm(a, b), min_time=min_time, min_reps=3)
            flops = 2.0 * m * n * k
            rows.append(
                {
                    "shape": f"{m}x{k} @ {k}x{n}",
                    "dtype": str(dtype).replace("torch.", ""),
                    **t,
                    "gflops_best": flops / t["best_s"] / 1e9,
                    "gflops_median": flops / t["median_s"] / 1e9,
                }
            )
    return rows


def build_vit(model_name: str) -> Any:
    """The UNI architecture (or a smaller ViT for ``--quick``) with random weights."""
    import timm

    return timm.create_model(
        model_name,
        pretrained=False,
        init_values=1e-5,
        dynamic_img_size=True,
        num_classes=0,
    ).eval()


def count_flops(model: Any, img: int) -> float:
    """FLOPs of one forward pass on one ``img x img`` patch (multiply-add = 2 FLOPs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, img, img)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return float(counter.get_total_flops())


def analytic_vit_flops(depth: int, dim: int, mlp_ratio: float, tokens: int, patch: int) -> float:
    """Closed-form FLOPs of a ViT forward pass (matmuls + attention, no norms/softmax)."""
    per_block_macs = tokens * dim * (3 * dim + dim + 2 * int(mlp_ratio * dim)) + 2 * tokens**2 * dim
    embed_macs = (tokens - 1) * (3 * patch * patch) * dim
    return 2.0 * (depth * per_block_macs + embed_macs)


def model_variants(
    model_name: str,
    batch: int,
    big_batch: int,
    img: int,
    min_time: float,
    min_reps: int,
    flops_per_patch: float,
    only: set[str] | None,
    local_n: int = 2048,
) -> list[dict]:
    """Patches/s of the ViT under several execution variants."""
    import torch

    results: list[dict] = []

    def record(name: str, note: str, bs: int, fn: Callable[[], Any]) -> None:
        if only is not None and name not in only:
            return
        print(f"  running {name} (batch {bs}) ...", file=sys.stderr, flush=True)
        # The bf16 matmul rate right before this variant: on a shared machine the available
        # compute drifts, so the fraction is also reported against this local roofline.
        with torch.backends.mkldnn.flags(enabled=True):
            local_rows = matmul_bench([(local_n,) * 3], min_time=1.0, dtypes=("bfloat16",))
        local = local_rows[0]
        try:
            t = _timeit(fn, min_time=min_time, min_reps=min_reps)
        except Exception as err:  # noqa: BLE001 - report, keep going with the other variants
            results.append({"variant": name, "note": note, "batch": bs, "error": repr(err)})
            traceback.print_exc()
            return
        pps = bs / t["best_s"]
        results.append(
            {
                "variant": name,
                "note": note,
                "batch": bs,
                **t,
                "patches_per_s": pps,
                "patches_per_s_median": bs / t["median_s"],
                "gflops": pps * flops_per_patch / 1e9,
                "local_bf16_matmul_gflops": local["gflops_best"],
                "frac_local_bf16_roofline": pps * flops_per_patch / 1e9 / local["gflops_best"],
            }
        )
        gc.collect()

    model = build_vit(model_name)
    x = torch.randn(batch, 3, img, img)
    xb = torch.randn(big_batch, 3, img, img)

    def fwd(m: Any, inp: torch.Tensor) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return m(inp)

        return run

    def fwd_autocast(m: Any, inp: torch.Tensor) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return m(inp)

        return run

    record("fp32", "fp32 weights and activations, inference_mode", batch, fwd(model, x))
    record("bf16-autocast", "torch.autocast('cpu', bfloat16)", batch, fwd_autocast(model, x))
    record(
        "bf16-autocast-big",
        "autocast, larger batch",
        big_batch,
        fwd_autocast(model, xb),
    )

    model_bf16 = build_vit(model_name).to(torch.bfloat16)
    model_bf16.load_state_dict({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})
    del model
    gc.collect()
    x16, xb16 = x.to(torch.bfloat16), xb.to(torch.bfloat16)
    record(
        "bf16-weights", "model.to(bfloat16), bf16 input, no autocast", batch, fwd(model_bf16, x16)
    )
    record(
        "bf16-weights-big",
        "bf16 weights, larger batch",
        big_batch,
        fwd(model_bf16, xb16),
    )

    if only is None or "bf16-weights-jit-freeze" in only:
        try:
            with torch.inference_mode():
                traced = torch.jit.freeze(torch.jit.trace(model_bf16, x16, check_trace=False))
            record(
                "bf16-weights-jit-freeze",
                "torch.jit.trace + torch.jit.freeze of the bf16 model",
                batch,
                fwd(traced, x16),
            )
            del traced
        except Exception as err:  # noqa: BLE001
            results.append({"variant": "bf16-weights-jit-freeze", "error": repr(err)})
    if only is None or "bf16-weights-onednn-fusion" in only:
        try:
            torch.jit.enable_onednn_fusion(True)
            with torch.no_grad():
                traced = torch.jit.freeze(torch.jit.trace(model_bf16, x16, check_trace=False))

            def run_traced() -> Any:
                with torch.no_grad():
                    return traced(x16)

            record(
                "bf16-weights-onednn-fusion",
                "jit trace/freeze with torch.jit.enable_onednn_fusion(True)",
                batch,
                run_traced,
            )
        except Exception as err:  # noqa: BLE001
            results.append({"variant": "bf16-weights-onednn-fusion", "error": repr(err)})
        finally:
            torch.jit.enable_onednn_fusion(False)
    if only is None or "bf16-weights-mkldnn-off" in only:
        prev = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False
        try:
            small = max(1, batch // 8)
            record(
                "bf16-weights-mkldnn-off",
                "bf16 weights with torch.backends.mkldnn.enabled = False (small batch: slow)",
                small,
                fwd(model_bf16, x16[:small]),
            )
        finally:
            torch.backends.mkldnn.enabled = prev
    return results


def package_encoders(batch: int, img: int, min_time: float, min_reps: int, quick: bool) -> list:
    """Time ``napari_histosge.features.get_encoder(...).embed`` on uint8 NHWC patches."""
    try:
        from napari_histosge.features import get_encoder
    except ImportError as err:
        return [{"encoder": "napari_histosge.features", "error": f"not importable: {err}"}]
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, size=(batch, img, img, 3), dtype=np.uint8)
    configs: list[tuple[str, dict]] = [("histology", {})]
    if quick:
        configs.append(("timm:vit_tiny_patch16_224", {"weights": "random"}))
        configs.append(("timm:vit_tiny_patch16_224", {"weights": "random", "bf16": True}))
    else:
        configs.append(("uni", {"weights": "random"}))
        configs.append(("uni", {"weights": "random", "bf16": True}))
    rows = []
    for name, kw in configs:
        label = name + (" bf16" if kw.get("bf16") else "")
        print(f"  package encoder {label} ...", file=sys.stderr, flush=True)
        try:
            enc = (
                get_encoder(name, device="cpu", **kw) if name != "histology" else get_encoder(name)
            )
            t = _timeit(lambda enc=enc: enc.embed(patches), min_time=min_time, min_reps=min_reps)
            rows.append(
                {
                    "encoder": label,
                    "id": getattr(enc, "id", None),
                    "dim": getattr(enc, "dim", None),
                    "batch": batch,
                    **t,
                    "patches_per_s": batch / t["best_s"],
                }
            )
            del enc
            gc.collect()
        except Exception as err:  # noqa: BLE001
            rows.append({"encoder": label, "error": repr(err)})
    return rows


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny model and matrices (seconds)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--big-batch", type=int, default=64)
    p.add_argument("--min-time", type=float, default=8.0, help="seconds per measurement")
    p.add_argument("--min-reps", type=int, default=3)
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--variants", default=None, help="comma-separated subset of variants")
    p.add_argument("--no-package", action="store_true", help="skip the package's encoders")
    p.add_argument("--name", default=None, help="result name (default throughput[_quick])")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.quick:
        model_name, img, batch, big = "vit_tiny_patch16_224", 224, 2, 4
        n, min_time, min_reps = 256, 0.2, 2
        mlp_shape = (64, 192, 768)
    else:
        model_name, img, batch, big = "vit_large_patch16_224", 224, args.batch, args.big_batch
        n, min_time, min_reps = args.matmul_n, args.min_time, args.min_reps
        tokens = batch * ((img // 16) ** 2 + 1)
        mlp_shape = (tokens, 1024, 4096)

    meta = run_metadata()
    meta["torch_config"] = {
        "num_threads": torch.get_num_threads(),
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    print("matmul ...", file=sys.stderr, flush=True)
    mm = matmul_bench([(n, n, n), mlp_shape], min_time=min(min_time, 4.0))
    roof = {r["dtype"]: r["gflops_best"] for r in mm if r["shape"] == f"{n}x{n} @ {n}x{n}"}

    model = build_vit(model_name)
    flops = count_flops(model, img)
    cfg = model.blocks[0].mlp.fc1
    analytic = analytic_vit_flops(
        depth=len(model.blocks),
        dim=model.embed_dim,
        mlp_ratio=cfg.out_features / cfg.in_features,
        tokens=(img // 16) ** 2 + 1,
        patch=16,
    )
    n_params = sum(p.numel() for p in model.parameters())
    del model
    gc.collect()

    only = set(args.variants.split(",")) if args.variants else None
    # FlopCounterMode does not count the fused CPU attention kernel (SDPA), so the closed form
    # (all matmuls including attention) is the reference for achieved GFLOP/s.
    variants = model_variants(
        model_name, batch, big, img, min_time, min_reps, analytic, only, local_n=n
    )
    for v in variants:
        if "gflops" in v:
            v["frac_bf16_roofline"] = v["gflops"] / roof["bfloat16"]
            v["frac_fp32_roofline"] = v["gflops"] / roof["float32"]
    pkg = [] if args.no_package else package_encoders(batch, img, min_time, min_reps, args.quick)

    result = {
        "benchmark": "throughput",
        "quick": args.quick,
        **meta,
        "model": {
            "timm_name": model_name,
            "kwargs": {"init_values": 1e-5, "dynamic_img_size": True, "num_classes": 0},
            "params": n_params,
            "input": [3, img, img],
            "flops_per_patch_counter": flops,
            "flops_per_patch_analytic": analytic,
            "flops_note": "achieved GFLOP/s use the analytic count; FlopCounterMode omits SDPA",
        },
        "matmul": mm,
        "roofline_gflops": roof,
        "variants": variants,
        "package_encoders": pkg,
        "peak_rss_mb": peak_rss_mb(),
        "loadavg_1_5_15_at_end": list(os.getloadavg()),
    }
    name = args.name or ("throughput_quick" if args.quick else "throughput")
    path = write_json(name, result)

    print(render_throughput(result))
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
