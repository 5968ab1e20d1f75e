"""The ``fcnseg`` command line: parses, calls the library, prints. Nothing imports this module."""

from __future__ import annotations

import argparse
import sys

from fcnseg import __version__


def _parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH like 500x500, got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return height, width


def _parse_opacity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in [0, 1] (0: the photo only, 1: the colours only), got {text}")
    return value


def _parse_positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1: off), got {text}")
    return value


def _parse_tta(text: str):
    from fcnseg.tta import parse_tta

    try:
        return parse_tta(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


TTA_HELP = ("test-time augmentation: average the class probabilities over views, 'flip', 'scales=0.75,1,1.25' "
            "or both, 'flip,scales=0.75,1,1.25' (each view costs one forward pass)")


def cmd_models(args: argparse.Namespace) -> int:
    from fcnseg.stats import model_table
    from fcnseg.weights import list_weights

    height, width = args.size
    print(f"{'model':<22}{'params':>12}{'GFLOPs @' + f'{height}x{width}':>18}  description")
    for row in model_table(num_classes=args.num_classes, height=height, width=width):
        print(f"{row['name']:<22}{row['params'] / 1e6:>11.1f}M{row['gflops']:>18.1f}  {row['description']}")
    # The shipped weights, one line per measured split; no blank line, so each line's first word stays a name.
    print(f"{'weights':<22}{'model':<16}{'classes':>7}{'file':>10}  scores (get_weights(NAME), "
          "build_model(MODEL, weights=NAME))")
    for weights in list_weights():
        size = f"{weights.path.stat().st_size / 1e6:.1f} MB" if weights.path.is_file() else "missing"
        scores = [evaluation.describe() for evaluation in weights.evaluations] or ["no measured scores"]
        print(f"{weights.name:<22}{weights.model_name:<16}{weights.num_classes:>7}{size:>10}  {scores[0]}")
        for score in scores[1:]:
            print(f"{'':<55}  {score}")
    return 0


def cmd_convert_caffe(args: argparse.Namespace) -> int:
    from fcnseg.caffe.convert import convert_caffemodel

    summary = convert_caffemodel(args.caffemodel, args.out, model_name=args.model, num_classes=args.num_classes)
    print(f"wrote {args.out}: {summary}")
    return 0


def cmd_seg11valid(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fcnseg.data.voc import seg11valid_ids

    ids = seg11valid_ids(args.voc, args.sbd)
    out = Path(args.voc) / "ImageSets" / "Segmentation" / "seg11valid.txt"
    out.write_text("\n".join(ids) + "\n")
    print(f"wrote {out}: {len(ids)} images (VOC2011 val minus SBD train; 736 for the real data sets)")
    return 0


def cmd_heatmap(args: argparse.Namespace) -> int:
    from fcnseg.heatmap import heatmap_file

    result = heatmap_file(args.image, args.out, class_name=args.class_name, variant=args.variant)
    print(f"wrote {result['out']}: heatmap of {result['class']!r}")
    for name, probability in result["top5"]:
        print(f"  {probability:6.1%}  {name}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from fcnseg.distributed import context_from_env
    from fcnseg.training import train
    from fcnseg.training.config import load_config, parse_overrides
    from fcnseg.training.interrupts import TrainingInterrupted

    overrides = parse_overrides(args.overrides)
    for key in ("model", "dataset", "root", "iters", "batch_size", "out", "recipe", "loss_sample"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    config = load_config(args.config, overrides)
    is_main = context_from_env().is_main  # under torchrun, print once
    try:
        result = train(config, resume=args.resume)
    except TrainingInterrupted as interrupted:  # last.pt is written
        if is_main:
            print(f"fcnseg train: {interrupted}", file=sys.stderr)
        return interrupted.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C
        if is_main:
            print("fcnseg train: interrupted again: stopped at once, without saving; --resume continues from the "
                  "last checkpoint", file=sys.stderr)
        return 130  # 128 + SIGINT, as the shell reports it
    if is_main:
        best = result["best_mean_iu"]  # -1 until a validation
        scores = f"best mean IU {100 * best:.2f}" if best >= 0 else "no validation yet"
        print(f"step {result['step']}: {scores}; checkpoints in {result['out']}")
    return 0


def _load_model(checkpoint: str | None):
    from fcnseg.checkpoint import default_checkpoint_path
    from fcnseg.inference.onnx_model import load_model_file

    return load_model_file(checkpoint if checkpoint is not None else default_checkpoint_path())


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from fcnseg.data import build_dataset, eval_transforms
    from fcnseg.distributed import pick_device
    from fcnseg.evaluate import evaluate, format_scores
    from fcnseg.tta import TTAModel

    if args.report is not None:  # checked before the model loads
        from fcnseg.distributed import context_from_env
        from fcnseg.outputs import require_writable_dir

        if context_from_env().distributed:
            raise ValueError("--report writes one folder from one process: run fcnseg eval --report without torchrun")
        if args.worst < 0:
            raise ValueError(f"--worst must be 0 or more, got {args.worst}")
        require_writable_dir(args.report, what="report folder")
    model, meta = _load_model(args.checkpoint)
    device = pick_device(args.device)
    if args.tta is not None:
        model = TTAModel(model, flip=args.tta.flip, scales=args.tta.scales)
    dataset = build_dataset(
        args.dataset, root=args.root, split=args.split, transforms=eval_transforms(normalization=meta.normalization)
    )
    if dataset.info.num_classes != meta.num_classes:
        raise ValueError(f"the model has {meta.num_classes} classes but {args.dataset} has {dataset.info.num_classes}")
    per_image = None
    if args.report is not None:
        from fcnseg.report import PerImageScores

        per_image = PerImageScores(num_classes=meta.num_classes, ignore_index=meta.ignore_index, keep=args.worst)
    scores = evaluate(
        model.to(device), dataset, num_classes=meta.num_classes, device=device, ignore_index=meta.ignore_index,
        max_images=args.max_images, progress=not args.json, per_image=per_image,
    )
    if per_image is not None:
        from fcnseg.report import attach_photos, write_report

        write_report(args.report, confusion=per_image.confusion, class_names=meta.class_names, palette=meta.palette,
                     worst=attach_photos(per_image.worst(), dataset=dataset), scores=scores,
                     ignore_index=meta.ignore_index)
    if args.json:
        scores["class_names"] = list(meta.class_names)
        if args.tta is not None:
            scores["tta"] = args.tta.spec
        print(json.dumps(scores))
    else:
        tta = f", TTA {args.tta.spec}" if args.tta is not None else ""
        print(f"{meta.model} on {args.dataset} {args.split} ({scores['num_images']} images{tta})")
        print(format_scores(scores, meta.class_names))
    if per_image is not None:
        print(f"wrote {args.report}: report.json, confusion.png, per_class_iu.png and {len(per_image.worst())} "
              "worst images in worst/", file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import os

    from tqdm import tqdm

    from fcnseg.distributed import barrier, pick_device, setup_distributed, teardown_distributed
    from fcnseg.predict import iter_predictions, merge_manifests, plan_predictions

    context, device = setup_distributed(pick_device(args.device))  # a no-op without torchrun's variables
    try:
        # inputs, output names and --out checked before the model loads; each rank plans its own share
        plan = plan_predictions(args.inputs, args.out, skip_existing=args.skip_existing, rank=context.rank,
                                world_size=context.world_size)
        for path, reason in plan.skipped if context.is_main else ():
            print(f"fcnseg predict: skipped {path}: {reason}", file=sys.stderr)
        if plan.done:
            print(f"fcnseg predict: {len(plan.done)} images already have outputs in {plan.out_dir} (skipped)",
                  file=sys.stderr)
        model, meta = _load_model(args.checkpoint)
        results = iter_predictions(
            model, meta, plan, device=device, overlay=args.overlay, alpha=args.alpha, legend=args.legend,
            dense=args.dense, bf16=args.bf16, tta=args.tta, batch_size=args.batch_size,
            workers=args.workers if args.workers is not None else (0 if (os.cpu_count() or 1) <= 2 else 1),
            writers=args.writers, progress=context.is_main and sys.stderr.isatty(),
        )
        failed = 0
        for result in results:
            if result["error"] is not None:
                failed += 1
                write_line(f"fcnseg predict: error: {result['error']} (skipped; continuing)", file=sys.stderr)
            elif not args.quiet:
                shares = ", ".join(f"{name} {100 * share:.0f}%" for name, share in result["classes"].items())
                write_line(f"{result['input']} -> {result['labels']}: {shares}")
        barrier()  # every rank's shard of the manifest is complete
        if context.is_main:
            merge_manifests(plan.out_dir)
    finally:
        teardown_distributed()
    if failed:
        print(f"fcnseg predict: {failed} of {len(plan.jobs)} images failed (named above); the others were written "
              f"to {plan.out_dir}", file=sys.stderr)
        return 1
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fcnseg.export import export_onnx, export_torchscript
    from fcnseg.outputs import require_writable_file

    require_writable_file(args.out)  # before the model loads
    model, meta = _load_model(args.checkpoint)
    if args.format == "onnx":
        path = export_onnx(model, args.out)
    else:
        path = export_torchscript(model, args.out)
    print(f"wrote {path}: {meta.model} as {args.format} (dynamic batch, height and width; checked against PyTorch)")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fcnseg.inference.onnx_model import read_metadata
    from fcnseg.quantize import quantize_checkpoint

    path = quantize_checkpoint(args.checkpoint, calibration=args.calibration, out=args.out,
                               num_images=args.images, method=args.method, reduce_range=not args.full_range)
    stored = read_metadata(path)
    images = stored["calibration"]["images"]
    print(f"wrote {path}: {stored['meta']['model']} as int8 QDQ ONNX ({path.stat().st_size / 1e6:.1f} MB), "
          f"{args.method} calibration on {len(images)} images:")
    for image in images:
        print(f"  {Path(image)}")
    return 0


def write_line(text: str, file=None) -> None:
    """``text`` and its newline in one write, above any progress bar: under torchrun every rank writes to the same
    pipe, and a line written in two calls (as ``print`` and ``tqdm.write`` do on an unbuffered stream) can be cut by
    another rank's line."""
    from tqdm import tqdm

    tqdm.write(text + "\n", file=file, end="")


def cmd_serve(args: argparse.Namespace) -> int:
    import importlib.util

    needed = {  # distribution -> the modules it may provide
        "starlette": ("starlette",), "uvicorn": ("uvicorn",), "python-multipart": ("python_multipart", "multipart"),
    }
    missing = [name for name, modules in needed.items() if not any(importlib.util.find_spec(m) for m in modules)]
    if missing:
        raise RuntimeError(
            f"fcnseg serve needs starlette, uvicorn and python-multipart ({', '.join(missing)} not installed): "
            "pip install 'fcnseg[serve]'"
        )
    import torch
    import uvicorn

    from fcnseg.distributed import pick_device
    from fcnseg.serve import ServeSettings, create_app, load_serving_model

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = ServeSettings(
        max_upload_bytes=round(args.max_upload_mb * 1e6), max_pixels=args.max_pixels, max_queue=args.max_queue,
    )
    device = pick_device(args.device)
    model, meta = load_serving_model(args.checkpoint, device=device, bf16=args.bf16)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"fcnseg serve: listening on {args.host}: anyone who can reach this address can use the server",
              file=sys.stderr)
    print(f"fcnseg serve: {meta.model} ({meta.num_classes} classes) on {device}, http://{args.host}:{args.port}/")
    uvicorn.run(create_app(model, meta, settings=settings, device=device), host=args.host, port=args.port,
                log_level=args.log_level)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fcnseg", description="Fully Convolutional Networks for Semantic Segmentation, in PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"fcnseg {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (as the environment variable FCNSEG_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    models = commands.add_parser(
        "models", help="list the models with parameter counts and GFLOPs, and the shipped weights with their scores"
    )
    models.add_argument("--size", type=_parse_size, default=(500, 500), help="input HEIGHTxWIDTH (default 500x500)")
    models.add_argument("--num-classes", type=int, default=21, help="number of classes (default 21, PASCAL VOC)")
    models.set_defaults(func=cmd_models)

    convert = commands.add_parser("convert-caffe", help="convert a reference .caffemodel into an fcnseg checkpoint")
    convert.add_argument("caffemodel", help="the reference's .caffemodel file")
    convert.add_argument("out", help="where to write the .pt checkpoint")
    convert.add_argument("--model", required=True, help="model name, as `fcnseg models` lists (e.g. fcn8s)")
    convert.add_argument("--num-classes", type=int, default=None, help="default: read from the score_fr weights")
    convert.set_defaults(func=cmd_convert_caffe)

    seg11 = commands.add_parser("seg11valid", help="write the paper's seg11valid list into a VOC2011 folder")
    seg11.add_argument("--voc", required=True, help="the VOC2011 folder (with ImageSets/Segmentation/val.txt)")
    seg11.add_argument("--sbd", required=True, help="the SBD dataset folder (with train.txt)")
    seg11.set_defaults(func=cmd_seg11valid)

    heat = commands.add_parser("heatmap", help="class-score heatmap of a convolutionalized ImageNet classifier")
    heat.add_argument("image", help="an image file, any size")
    heat.add_argument("--class", dest="class_name", help="ImageNet class name (default: the top prediction)")
    heat.add_argument("--out", default="heatmap.png", help="overlay PNG to write (default heatmap.png)")
    heat.add_argument("--variant", default="lite0", choices=["lite0", "lite1", "lite2"])
    heat.set_defaults(func=cmd_heatmap)

    train = commands.add_parser("train", help="train a model (writes OUT/last.pt, OUT/best.pt, log.csv)")
    train.add_argument("--model", help="model name, as `fcnseg models` lists")
    train.add_argument("--dataset", help="voc, sbd, camvid, cityscapes, siftflow, nyud, pascal-context or folder")
    train.add_argument("--root", help="the data set's folder")
    train.add_argument("--config", help="a YAML file of config keys")
    train.add_argument("--recipe", choices=["paper", "modern"], default=None)
    train.add_argument("--iters", type=int, help="optimizer steps")
    train.add_argument("--batch-size", dest="batch_size", type=int)
    train.add_argument("--out", help="run folder (default runs/fcnseg)")
    train.add_argument("--loss-sample", dest="loss_sample", type=float, metavar="P",
                       help="keep each final-layer cell's loss with probability P (the paper's patch sampling)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. lr=0.01")
    train.set_defaults(func=cmd_train, usage_error=train.error)

    evaluate = commands.add_parser("eval", help="score a model with pixel acc., mean acc., mean IU, f.w. IU")
    evaluate.add_argument("--checkpoint", help="an fcnseg checkpoint (default: the shipped CamVid model)")
    evaluate.add_argument("--dataset", default="camvid")
    evaluate.add_argument("--root", required=True, help="the data set's folder")
    evaluate.add_argument("--split", default="val")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--max-images", dest="max_images", type=int, default=None)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object (metrics as fractions)")
    evaluate.add_argument("--tta", type=_parse_tta, default=None, metavar="SPEC", help=TTA_HELP)
    evaluate.add_argument("--report", metavar="DIR", default=None,
                          help="also write DIR/report.json, confusion.png, per_class_iu.png and worst/: the images "
                          "of lowest mean IU as photo | truth | prediction | errors (not under torchrun)")
    evaluate.add_argument("--worst", type=int, default=8, metavar="N",
                          help="how many worst images --report draws (default 8)")
    evaluate.set_defaults(func=cmd_eval)

    predict = commands.add_parser("predict", help="segment image files or folders")
    predict.add_argument("inputs", nargs="+",
                         help="image files, folders (walked with their subfolders; outputs mirror their paths), "
                         "quoted glob patterns ('photos/**/*.jpg') or @LIST files (one image path per line)")
    predict.add_argument("--checkpoint", help="an fcnseg checkpoint (default: the shipped CamVid model)")
    predict.add_argument("--out", default="predictions", help="output folder (default predictions/)")
    predict.add_argument("--overlay", choices=["blend", "side-by-side", "none"], default="blend")
    predict.add_argument("--alpha", type=_parse_opacity, default=0.5,
                         help="overlay opacity in [0, 1] (default 0.5)")
    predict.add_argument("--device", default="auto")
    predict.add_argument("--bf16", action="store_true",
                         help="bf16 inference where the hardware has fast bf16 kernels (AMX or AVX512-BF16 CPUs, "
                         "CUDA); checked against float32 on a small example (docs/performance.md)")
    predict.add_argument("--dense", type=_parse_positive_int, default=1, metavar="FACTOR",
                         help="score_fr made FACTOR times denser by shift-and-stitch (skips unused; default 1)")
    predict.add_argument("--tta", type=_parse_tta, default=None, metavar="SPEC",
                         help=TTA_HELP + "; with --dense, each view runs the rarefied model")
    predict.add_argument("--legend", choices=["classes", "shares", "none"], default="classes",
                         help="overlay legend: the classes present (default), with their pixel shares, or none")
    predict.add_argument("--batch-size", dest="batch_size", type=_parse_positive_int, default=4,
                         help="images of one size run together (default 4)")
    predict.add_argument("--workers", type=int, default=None,
                         help="DataLoader processes decoding images (0: the main process; default 0 on a CPU of "
                         "2 cores or fewer, where a worker slows the model, else 1)")
    predict.add_argument("--writers", type=_parse_positive_int, default=2,
                         help="threads encoding and writing PNGs (default 2)")
    predict.add_argument("--skip-existing", dest="skip_existing", action="store_true",
                         help="skip images whose label PNG exists in --out (resume an interrupted run)")
    predict.add_argument("--quiet", action="store_true", help="no line per image (errors are still printed)")
    predict.set_defaults(func=cmd_predict)

    export = commands.add_parser("export", help="export a model to ONNX or TorchScript, checked against PyTorch")
    export.add_argument("checkpoint", nargs="?", help="an fcnseg checkpoint (default: the shipped CamVid model)")
    export.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    export.add_argument("--out", required=True, help="file to write (e.g. model.onnx)")
    export.set_defaults(func=cmd_export)

    quantize = commands.add_parser(
        "quantize", help="int8 post-training quantization into an ONNX file that predict, eval and serve take")
    quantize.add_argument("checkpoint", nargs="?", help="an fcnseg checkpoint (default: the shipped CamVid model)")
    quantize.add_argument("--calibration", nargs="+", required=True, metavar="DIR_OR_GLOB",
                          help="calibration images: files, folders or quoted globs (training images, not the "
                          "images you will score)")
    quantize.add_argument("--out", required=True, help="file to write (e.g. model-int8.onnx)")
    quantize.add_argument("--images", type=_parse_positive_int, default=16, metavar="N",
                          help="calibration images, spread evenly over the sorted list (default 16)")
    quantize.add_argument("--method", choices=["minmax", "percentile", "entropy"], default="minmax",
                          help="how activation ranges are chosen (default minmax; docs/performance.md)")
    quantize.add_argument("--full-range", action="store_true",
                          help="8-bit weights instead of 7-bit: only for CPUs with VNNI or AMX; without them (AVX2 "
                          "only) the int8 products saturate and the labels degrade (docs/performance.md)")
    quantize.set_defaults(func=cmd_quantize)

    serve = commands.add_parser("serve", help="a web page and HTTP API that segment uploaded images")
    serve.add_argument("--checkpoint", help="an fcnseg checkpoint (default: the shipped CamVid model)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--max-upload-mb", dest="max_upload_mb", type=float, default=10.0,
                       help="largest upload in megabytes (default 10)")
    serve.add_argument("--max-pixels", dest="max_pixels", type=int, default=12_000_000,
                       help="largest image in pixels, checked before decoding (default 12000000: 4000x3000)")
    serve.add_argument("--max-queue", dest="max_queue", type=int, default=32,
                       help="segment requests in progress or waiting; more get 503 (default 32)")
    serve.add_argument("--threads", type=int, default=None, help="torch threads for inference (default: torch's)")
    serve.add_argument("--device", default="auto")
    serve.add_argument("--bf16", action="store_true",
                       help="bf16 inference where the hardware has fast bf16 kernels (AMX or AVX512-BF16 CPUs, "
                       "CUDA); checked against float32 on a small example (docs/performance.md)")
    serve.add_argument("--log-level", dest="log_level", default="info",
                       choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(func=cmd_serve)
    return parser


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, with ``train``'s ``key=value`` overrides accepted after flags as well as before."""
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "command", None) == "train" and not any(item.startswith("-") for item in extra):
        args.overrides = [*args.overrides, *extra]  # e.g. `train crop_size=64 --iters 1 lr=0.1`
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "command", None) == "train" and not (
        args.config or args.root or any(item.startswith("root=") for item in args.overrides)
    ):
        args.usage_error("give the data set's folder: --root DIR (or root=DIR, or root: in a --config file)")
    return args


def describe_error(error: BaseException) -> str:
    """One line for an error the CLI reports without a traceback."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        target = f" -> {error.filename2}" if error.filename2 is not None else ""
        return f"{error.filename}{target}: {error.strerror}"
    text = str(error)
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: the original error's own line
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].endswith("Error") else last
    text = " ".join(text.split()) or type(error).__name__
    if isinstance(error, (ValueError, OSError)):  # fcnseg's own errors (DataError, CheckpointError, ...) included
        return text
    return f"{type(error).__name__}: {text} (FCNSEG_DEBUG=1 shows the traceback)"


def main(argv: list[str] | None = None) -> int:
    """Run one command; a known error becomes one line on stderr and exit code 2 (``--debug`` or ``FCNSEG_DEBUG=1``:
    the traceback instead), an interrupt exit code 130."""
    import os

    import yaml

    parser = build_parser()
    args = parse_command_line(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    debug = args.debug or os.environ.get("FCNSEG_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"fcnseg {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, yaml.YAMLError, KeyError, TypeError, RuntimeError) as error:
        if debug:
            raise
        print(f"fcnseg {args.command}: error: {describe_error(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
