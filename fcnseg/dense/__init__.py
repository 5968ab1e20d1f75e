"""Dense output from a coarse FCN (paper, section 3.2): shift-and-stitch, and filter rarefaction.

``coarse_scores(model, x)`` is the stride-``S`` score map: ``score_fr`` (``S = 32``) of a package FCN, the output
of a plain coarse network. For a factor ``f`` dividing ``S``, the dense map has stride ``r = S / f``:

  ``shift_and_stitch``  the literal algorithm, ``f * f`` passes: shift ``(dy, dx)`` crops the first ``r * dy`` rows
                        and ``r * dx`` columns of the input, and ``dense[..., f * i + dy, f * j + dx] =
                        coarse_scores(model, shifted(dy, dx))[..., i, j]``, so dense cell ``t`` is centred on input
                        pixel ``r * t + c`` (coarse cell ``i`` on ``S * i + c``), the centre of its receptive field.
  ``rarefy``            one pass: every conv/pool layer whose input stride ``s_in`` is at least ``r`` gets stride 1
                        and dilation ``s_in / r`` (max pools included), giving the same cells in the same order.

Borders (docs/dense.md): a shifted input starts ``r * dy`` pixels into the image, so a layer before the last rarefied
stride that pads at the top/left reads zeros where the rarefied net reads image; no single pass reproduces all
``f * f`` borders. The maps are equal at every cell whose receptive field lies inside its shifted input, everywhere
when no such layer pads, and ``dense[..., ::f, ::f]`` is always ``coarse_scores(model, x)``.

Skip models (FCN-16s/8s): only their stride-32 ``score_fr`` path is used (the FCN-32s that shares their trunk).
"""

from fcnseg.dense.coarse import coarse_scores, dense_logits, prepare_input, score_centre, trace_strides
from fcnseg.dense.patchwise import patchwise
from fcnseg.dense.rarefy import RarefiedFCN, rarefy
from fcnseg.dense.shift_and_stitch import interlace, shift_and_stitch

__all__ = ["RarefiedFCN", "coarse_scores", "dense_logits", "interlace", "patchwise", "prepare_input", "rarefy",
           "score_centre", "shift_and_stitch", "trace_strides"]
