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


def cmd_models(args: argparse.Namespace) -> int:
    from fcnseg.summary import model_table

    height, width = args.size
    print(f"{'model':<16}{'params':>12}{'GFLOPs @' + f'{height}x{width}':>18}  description")
    for row in model_table(num_classes=args.num_classes, height=height, width=width):
        print(f"{row['name']:<16}{row['params'] / 1e6:>11.1f}M{row['gflops']:>18.1f}  {row['description']}")
    return 0


def cmd_convert_caffe(args: argparse.Namespace) -> int:
    from fcnseg.caffe.convert import convert_caffemodel

    summary = convert_caffemodel(args.caffemodel, args.out, model_name=args.model, num_classes=args.num_classes)
    print(f"wrote {args.out}: {summary}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fcnseg", description="Fully Convolutional Networks for Semantic Segmentation, in PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"fcnseg {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    models = commands.add_parser("models", help="list the models with parameter counts and GFLOPs")
    models.add_argument("--size", type=_parse_size, default=(500, 500), help="input HEIGHTxWIDTH (default 500x500)")
    models.add_argument("--num-classes", type=int, default=21, help="number of classes (default 21, PASCAL VOC)")
    models.set_defaults(func=cmd_models)

    convert = commands.add_parser("convert-caffe", help="convert a reference .caffemodel into an fcnseg checkpoint")
    convert.add_argument("caffemodel", help="the reference's .caffemodel file")
    convert.add_argument("out", help="where to write the .pt checkpoint")
    convert.add_argument("--model", required=True, help="model name, as `fcnseg models` lists (e.g. fcn8s)")
    convert.add_argument("--num-classes", type=int, default=None, help="default: read from the score_fr weights")
    convert.set_defaults(func=cmd_convert_caffe)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError, TypeError) as error:
        print(f"fcnseg {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
