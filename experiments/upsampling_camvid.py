"""Upsampling fixed or learned (paper, section 3.3), on CamVid: bilinear deconvolution kept fixed (the reference's
choice), learned from its bilinear start (``learnable_upsampling=true``), and plain interpolation.

    OMP_NUM_THREADS=2 python experiments/upsampling_camvid.py --root ../shared/data/camvid --iters 300 \\
        --out runs/upsampling

The paper: "upsampling with factor f is convolution with a fractional input stride of 1/f", initialized to
bilinear interpolation, and "we found [learning it] to yield little improvement" (the reference keeps it fixed).

Variants, all ``fcn8s-lite0`` from ImageNet weights with the same budget (``experiments/loss_sampling_camvid.py``):

  ``fixed``        the package default: frozen bilinear transposed convolutions;
  ``learned``      the same kernels, trained (``learnable_upsampling=true``);
  ``interpolate``  every ``BilinearUpsample`` replaced by ``ClampedBilinearUpsample``: ``F.interpolate`` with the
                   same cell alignment, size and crops. In the interior it equals the deconvolution; at the border
                   it repeats the edge cells where the deconvolution interpolates against zero cells and fades
                   (docs/paper.md). So this variant isolates the border behaviour, the one difference left.

The ``interpolate`` variant has no config key (upsampling is a model property; no option was added for one
experiment): during its run this script wraps ``fcnseg.training.loop.build_training_model`` so that the model it returns
gets the replacement, and restores it afterwards. Its checkpoints load into a plain ``fcn8s-lite0`` (same keys),
which then upsamples by deconvolution again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch
from loss_sampling_camvid import add_budget_arguments, base_config, check_variants, plot_curves, run_variants
from torch import nn
from torch.nn import functional as F

import fcnseg.training.loop
from fcnseg.models.layers import BilinearUpsample


def interpolate_like_deconvolution(x: torch.Tensor, *, factor: int, kernel_size: int, mode: str) -> torch.Tensor:
    """``(N, K, h, w) -> (N, K, f (h - 1) + k, f (w - 1) + k)``: bilinear interpolation placing cell ``i`` where the
    ``BilinearUpsample`` of that kernel does (``f i + (k - 1) / 2``), against a ring of extra cells: ``"constant"``
    (zeros: equals the deconvolution everywhere) or ``"replicate"`` (F.interpolate's clamping at the border)."""
    height, width = x.shape[-2:]
    ring = F.pad(x, [1, 1, 1, 1], mode=mode)  # (N, K, h + 2, w + 2); cell i is ring cell i + 1
    if kernel_size == 2 * factor and factor % 2 == 0:  # half-pixel centres: f i + f - 0.5
        up = F.interpolate(ring, scale_factor=factor, mode="bilinear", align_corners=False)
        start = factor // 2  # ring cell c sits at f c + (f - 1) / 2 there, i.e. f / 2 further on
    elif kernel_size == 2 * factor - 1:  # integer centres: f i + f - 1
        size = (factor * (height + 1) + 1, factor * (width + 1) + 1)  # exactly f outputs per ring cell
        up = F.interpolate(ring, size=size, mode="bilinear", align_corners=True)
        start = 1  # ring cell c sits at f c there, i.e. one further on
    else:
        raise ValueError(f"no interpolation matches kernel {kernel_size} at factor {factor}")
    out_height, out_width = factor * (height - 1) + kernel_size, factor * (width - 1) + kernel_size
    return up[..., start : start + out_height, start : start + out_width]


class ClampedBilinearUpsample(BilinearUpsample):
    """``BilinearUpsample``'s size and alignment, computed by ``F.interpolate`` with clamped (replicated) borders."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return interpolate_like_deconvolution(x, factor=self.stride[0], kernel_size=self.kernel_size[0],
                                              mode="replicate")


def use_interpolation(model: nn.Module) -> nn.Module:
    """Replace every ``BilinearUpsample`` of ``model`` (in place), after checking the equivalence they rely on."""
    for name, module in list(model.named_modules()):
        if type(module) is not BilinearUpsample:
            continue
        check_equivalence(module)
        parent, _, child = name.rpartition(".")
        replacement = ClampedBilinearUpsample(module.in_channels, stride=module.stride[0],
                                              kernel_size=module.kernel_size[0]).to(module.weight.device)
        setattr(model.get_submodule(parent), child, replacement)
    return model


@torch.no_grad()
def check_equivalence(module: BilinearUpsample) -> None:
    """With a zero ring, the interpolation must equal the (still bilinear) deconvolution everywhere."""
    scores = torch.randn(1, module.in_channels, 3, 4, device=module.weight.device)
    zero_ring = interpolate_like_deconvolution(scores, factor=module.stride[0], kernel_size=module.kernel_size[0],
                                               mode="constant")
    torch.testing.assert_close(zero_ring, module(scores), atol=1e-5, rtol=1e-5)


@contextlib.contextmanager
def interpolating_training_models():
    """While active, ``fcnseg.training.loop.train`` builds models whose upsampling is ``ClampedBilinearUpsample``."""
    original = fcnseg.training.loop.build_training_model

    def build(config):
        model, normalization = original(config)
        return use_interpolation(model), normalization

    fcnseg.training.loop.build_training_model = build
    try:
        yield
    finally:
        fcnseg.training.loop.build_training_model = original


def upsampling_variants(args: argparse.Namespace) -> dict[str, dict]:
    base = base_config(args)
    return {"fixed": {**base, "learnable_upsampling": False}, "learned": {**base, "learnable_upsampling": True},
            "interpolate": {**base, "learnable_upsampling": False}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_budget_arguments(parser)
    parser.add_argument("--variants", nargs="+", default=["fixed", "learned", "interpolate"],
                        choices=["fixed", "learned", "interpolate"])
    args = parser.parse_args()
    variants = {name: values for name, values in upsampling_variants(args).items() if name in args.variants}
    out = Path(args.out)
    if args.dry_run:
        return check_variants(variants, out=out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, values in variants.items():
        with interpolating_training_models() if name == "interpolate" else contextlib.nullcontext():
            results.update(run_variants({name: values}, out=out))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot_curves(results, out / "curves.png", title="upsampling (CamVid)")
    print(f"wrote {out / 'results.json'} and {out / 'curves.png'}")


if __name__ == "__main__":
    main()
