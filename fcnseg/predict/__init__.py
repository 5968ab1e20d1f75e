"""Segment images at scale: files, folders, globs and lists in; label PNGs (the data set's palette), overlays
with legends and a manifest out; batched, resumable, and sharded across ``torchrun`` ranks.

``plan.py`` decides what runs and where it goes, ``pipeline.py`` runs it (decoding workers, size batches, a
writer pool), ``pictures.py`` draws and writes one image's outputs, ``manifest.py`` keeps ``OUT/manifest.jsonl``.
"""

from fcnseg.predict.manifest import merge_manifests, read_manifest
from fcnseg.predict.pictures import blend_overlay, class_shares, overlay_picture, side_by_side
from fcnseg.predict.pipeline import ImageFiles, fast_model, iter_predictions, predict_labels, predict_paths
from fcnseg.predict.plan import IMAGE_SUFFIXES, PredictionPlan, output_path, plan_predictions, walk_folder

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageFiles",
    "PredictionPlan",
    "blend_overlay",
    "class_shares",
    "fast_model",
    "iter_predictions",
    "merge_manifests",
    "output_path",
    "overlay_picture",
    "plan_predictions",
    "predict_labels",
    "predict_paths",
    "read_manifest",
    "side_by_side",
    "walk_folder",
]
