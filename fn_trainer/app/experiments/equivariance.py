"""Question 1: is a convolution-only model equivariant to shifts, to 90-degree rotations?

The model is the homework's ``x -> relu(conv(relu(conv(x))))`` with one 3x3, 1-channel
convolution (applied twice, valid padding). For a transformation ``g`` we measure
``|g(f(x)) - f(g(x))|`` pixel by pixel, over the whole map and over its interior
(``border`` pixels away from every edge, where the shift's zero fill and the valid
padding cannot reach).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Dict

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch import Tensor, nn
from torch.func import functional_call

from ...core.networks import init_params
from . import experiment_name

NAME = experiment_name(__name__)
MAX_DRAWS = 100
SHIFT = 5  # pixels right and down; also the border left out of the interior
RELATIVE_ZERO = 1e-6  # an interior difference below this fraction of the mean feature is zero (float precision)
FIGURES = {
    "image": ("original.png", "Original image (first training image, pixels / 255)", "pixel value", "gray"),
    "features": ("features.png", "Output of the conv-only model f(x)", "activation", "viridis"),
    "shift_difference": ("shift_difference.png", "|shift(f(x)) - f(shift(x))|, shift {s} px right and down",
                         "absolute difference", "magma"),
    "rotation_difference": ("rotation_difference.png", "|rotate(f(x)) - f(rotate(x))|, rotation by 90°",
                            "absolute difference", "magma"),
}


def equivariance_maps(image: Tensor, seed: int, shift: int = SHIFT) -> Dict[str, Any]:
    """Feature map and equivariance errors of the homework's conv-only model on ``image``.

    ``image``: ``(H, W)``, ``(1, H, W)`` or ``(1, 1, H, W)`` floats (pixels / 255). The
    3x3 convolution is drawn from a generator seeded with ``seed`` (PyTorch's default
    distribution), redrawn while the feature map is identically zero (``stats["draws"]``
    counts the draws).
    Returns 2-D float64 numpy arrays ``image`` (H, W), ``features``,
    ``shift_difference`` and ``rotation_difference`` (H-4, W-4), plus ``stats``: floats
    ``{shift,rotation}_{mean,max}`` over the whole map,
    ``{shift,rotation}_interior_{mean,max}`` over the interior, ``feature_interior_mean``
    (mean |f(x)| there, for scale), ``border`` (int, = ``shift``) and ``draws``.
    """
    if not isinstance(image, Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() < 2 or image.numel() != image.shape[-1] * image.shape[-2]:
        raise ValueError(f"image must be one 2-D image ((H, W) or (1, H, W)), got shape {tuple(image.shape)}")
    x = image.detach().to(torch.float32).reshape(1, 1, *image.shape[-2:])
    conv = nn.Conv2d(in_channels=1, out_channels=1, kernel_size=3, stride=1, padding=0)
    generator = torch.Generator().manual_seed(seed)
    for draws in range(1, MAX_DRAWS + 1):
        params = init_params(conv, generator)

        def model(t: Tensor) -> Tensor:
            return torch.relu(functional_call(conv, params, (torch.relu(functional_call(conv, params, (t,))),)))

        with torch.no_grad():
            features = model(x)
        # An all-zero output (every unit dead after a ReLU) shows nothing about equivariance.
        if features.abs().max() > 0:
            break
    else:
        raise ValueError(f"image gives an all-zero feature map for the first {MAX_DRAWS} convolutions drawn from seed {seed}")

    shift_fn = partial(TF.affine, angle=0, translate=(shift, shift), scale=1, shear=0)
    rotation = partial(TF.affine, angle=90, translate=(0, 0), scale=1, shear=0)
    with torch.no_grad():
        maps = {
            "image": x[0, 0],
            "features": features[0, 0],
            "shift_difference": (shift_fn(features) - model(shift_fn(x))).abs()[0, 0],
            "rotation_difference": (rotation(features) - model(rotation(x))).abs()[0, 0],
        }
    out: Dict[str, Any] = {k: v.to(torch.float64).numpy() for k, v in maps.items()}
    b = shift
    if min(out["features"].shape) <= 2 * b:
        raise ValueError(f"shift must leave an interior: the feature map is {out['features'].shape}, shift {shift}")
    stats: Dict[str, Any] = {"border": b, "draws": draws}
    for name in ("shift", "rotation"):
        diff = out[f"{name}_difference"]
        stats[f"{name}_mean"] = float(diff.mean())
        stats[f"{name}_max"] = float(diff.max())
        stats[f"{name}_interior_mean"] = float(diff[b:-b, b:-b].mean())
        stats[f"{name}_interior_max"] = float(diff[b:-b, b:-b].max())
    stats["feature_interior_mean"] = float(np.abs(out["features"][b:-b, b:-b]).mean())
    out["stats"] = stats
    return out


def run(ctx, shift: int = SHIFT) -> Dict[str, Any]:
    """Figures, ``equivariance.json`` and the report section for the first training image."""
    # Imported here so that equivariance_maps needs only torch and torchvision.
    from ..plots import plot_map
    from ..report import write_section
    from .records import write_json

    folder = ctx.folder(NAME)
    result = equivariance_maps(ctx.splits.train.X[0] / 255.0, ctx.settings.seed, shift)
    stats = result["stats"]
    diff_max = max(result["shift_difference"].max(), result["rotation_difference"].max())

    def compose() -> str:
        for key, (filename, title, cbar, cmap) in FIGURES.items():
            is_diff = key.endswith("difference")
            plot_map(result[key], folder / filename, title=title.format(s=shift), colorbar_label=cbar, cmap=cmap,
                     box=stats["border"] if is_diff else None,
                     vmin=0.0 if is_diff else None, vmax=diff_max if is_diff else None)
        write_json(folder / "equivariance.json", {"seed": ctx.settings.seed, "shift": shift, "stats": stats})
        return section(ctx, stats, result["features"].shape, shift)
    ctx.echo(f"equivariance: shift interior max |diff| {stats['shift_interior_max']:.3g}, "
             f"rotation interior max |diff| {stats['rotation_interior_max']:.3g}")
    write_section(ctx.out, NAME, compose, ctx.warn)
    return result


def section(ctx, stats: Dict[str, Any], shape, shift: int) -> str:
    from ..report import image, markdown_table

    b = stats["border"]
    rows = [[name, f"{stats[f'{key}_mean']:.3g}", f"{stats[f'{key}_max']:.3g}",
             f"{stats[f'{key}_interior_mean']:.3g}", f"{stats[f'{key}_interior_max']:.3g}"]
            for name, key in ((f"shift by ({shift}, {shift}) px", "shift"), ("rotation by 90°", "rotation"))]
    equivariant = [name for name, key in (("shift", "shift"), ("90° rotation", "rotation"))
                   if stats[f"{key}_interior_max"] <= RELATIVE_ZERO * max(stats["feature_interior_mean"], 1e-12)]
    verdict = (f"Interior differences are zero (to float precision) for: {', '.join(equivariant)}."
               if equivariant else "No transformation gives zero interior differences.")
    draws = "" if stats["draws"] == 1 else f" (draw {stats['draws']}: the earlier draws gave an all-zero feature map)"
    figs = "\n".join(image(NAME, fn, k) for k, (fn, *_rest) in FIGURES.items())
    return "\n".join([
        "## 1. Equivariance of convolution", "",
        f"Command: `{ctx.settings.command}`", "",
        f"Model `x -> relu(conv(relu(conv(x))))`, one 3x3 convolution drawn from seed "
        f"{ctx.settings.seed}{draws}, applied to the first training image (pixels / 255). Differences "
        f"`|g(f(x)) - f(g(x))|`; the interior excludes {b} px at every edge of the "
        f"{shape[0]}x{shape[1]} feature map (the dashed box in the difference figures).", "",
        markdown_table(["transformation", "mean abs. diff.", "max abs. diff.", "interior mean abs. diff.",
                        "interior max abs. diff."], rows), "",
        f"Mean absolute feature value f(x) in the interior, for scale: {stats['feature_interior_mean']:.3g}. {verdict}", "",
        figs,
    ])

