"""Command line for the engine: `python -m models {train,classify,imagenet,export,backbones}`.

Run `python -m models --help` for usage. JSON goes to stdout; progress and summaries go to
stderr, so the output can be piped into `jq` or a file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from models.exporting.formats import FORMATS
from models.registry import BACKBONES, availability, default_backbones
from models.result import REPORT_FILE

DEFAULT_CACHE = Path(os.environ.get("TRANSFERLAB_CACHE", Path.home() / ".cache" / "transferlab"))


def _backbone_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKBONES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown backbone(s) {', '.join(unknown)}; choose from {', '.join(BACKBONES)}")
    return names


def _loader(weights_dir):
    from models.backbones import load_backbone

    return lambda name: load_backbone(name, "imagenet", weights_dir)


def _open_images(paths: list[str]):
    from models.images import ImageRejected, decode_image

    images = []
    for path in paths:
        try:
            images.append(decode_image(Path(path).read_bytes()))
        except (OSError, ImageRejected) as exc:
            raise SystemExit(f"error: {path}: {getattr(exc, 'reason', exc)}") from exc
    return images


def _summary(report: dict) -> str:
    def pct(v):
        return "   -  " if v is None else f"{100 * v:5.1f}%"

    lines = [f"classes: {', '.join(report['classes'])} "
             f"({report['n_train']} training, {report['n_test']} test images)",
             f"{'model':<22}{'CV acc':>8}{'± std':>8}{'test acc':>10}{'train acc':>11}"]
    rows = list(report["backbones"].items()) + [("ensemble (vote)", report["ensemble"])]
    for name, e in rows:
        lines.append(f"{name:<22}{pct(e['cv_accuracy']):>8}{pct(e['cv_accuracy_std']):>8}"
                     f"{pct(e['test_accuracy']):>10}{pct(e['train_accuracy']):>11}")
    lines.append("train acc is measured on the training images themselves: not an accuracy estimate")
    for name, e in report["backbones"].items():
        if "fine_tuning" in e:
            lines.append(f"{name} fine-tuning: {e['fine_tuning']['reason']}")
    return "\n".join(lines)


def cmd_train(args) -> int:
    from models.datasets import read_dataset
    from models.features import FeatureCache
    from models.training import TrainingError, train

    data = read_dataset(args.dataset)
    test = read_dataset(args.test) if args.test else None
    for ds in filter(None, (data, test)):
        for r in ds.rejected:
            print(f"skipped {r.source}: {r.reason}", file=sys.stderr)
    cache = FeatureCache(Path(args.cache) / "features")
    backbones = args.backbones or default_backbones(args.weights_dir)
    if not args.backbones:
        print(f"backbones: {','.join(backbones)} (the defaults whose weights are here)",
              file=sys.stderr)

    def show(p):
        print(f"\r{p.stage}: {p.done}/{p.total} ({100 * p.fraction:.0f}%)   ", end="",
              file=sys.stderr, flush=True)

    try:
        result = train(data.samples, backbones, cache, _loader(args.weights_dir),
                       test_samples=test.samples if test else (), progress=show,
                       fine_tune=args.fine_tune)
    except TrainingError as exc:
        raise SystemExit(f"error: {exc}") from exc
    print(file=sys.stderr)
    result.report["rejected"] = [vars(r) for r in data.rejected]
    out = result.save(args.out)
    print(_summary(result.report), file=sys.stderr)
    print(f"saved to {out} (report: {out / REPORT_FILE})", file=sys.stderr)
    if args.json:
        json.dump(result.report, sys.stdout, indent=1)
        print()
    return 0


def cmd_classify(args) -> int:
    from models.predictor import Predictor

    predictor = Predictor(args.result, _loader(args.weights_dir))
    answers = predictor.predict(_open_images(args.images), top_k=args.top)
    json.dump([dict(a, image=p) for a, p in zip(answers, args.images)], sys.stdout, indent=1)
    print()
    return 0


def cmd_imagenet(args) -> int:
    from models.imagenet import imagenet_labels
    from models.predictor import imagenet_predict

    load = _loader(args.weights_dir)
    backbones = {name: load(name) for name in args.backbones}
    answers = imagenet_predict(_open_images(args.images), backbones, imagenet_labels(), args.top)
    json.dump([dict(a, image=p) for a, p in zip(answers, args.images)], sys.stdout, indent=1)
    print()
    return 0


def cmd_export(args) -> int:
    import shutil

    from models.exporting.bundle import export_zip

    try:
        built = export_zip(args.result, args.target, args.format, _loader(args.weights_dir))
    except ValueError as exc:
        raise SystemExit(f"error: {args.result}: {exc}") from None
    shutil.copyfile(built, args.output)
    print(f"saved {args.output}: {args.format} model of {args.target} with labels.txt, "
          "model.json and predict.py (runs without Transferlab)", file=sys.stderr)
    return 0


def cmd_backbones(args) -> int:
    rows = []
    for name, spec in BACKBONES.items():
        a = availability(name, args.weights_dir)
        rows.append({"name": name, "title": spec.title, "available": a.available,
                     "reason": a.reason, "input_size": spec.input_size})
    json.dump(rows, sys.stdout, indent=1)
    print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__.split("\n")[0])
    parser.add_argument("--weights-dir", help="folder holding backbone weights under Keras's "
                        "file names (default: $TRANSFERLAB_WEIGHTS_DIR, then Keras's cache)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train heads from a dataset folder or zip")
    p.add_argument("dataset", help="folder of class folders, folder of per-class zips, or a zip")
    p.add_argument("--test", help="a separate test set, in the same forms")
    p.add_argument("--backbones", type=_backbone_list, default=None,
                   help="comma-separated (default: as a new project in the app, the backbones "
                        "whose weights are here: ResNet50, VGG16 and Xception when all three "
                        "are, else those of them that are plus the offline EfficientNet-Lite0/1/2;"
                        " see `python -m models backbones`)")
    p.add_argument("--out", default="transferlab-result", help="output folder")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="cache folder (features)")
    p.add_argument("--json", action="store_true", help="print the full report JSON to stdout")
    p.add_argument("--fine-tune", action="store_true",
                   help="also fine-tune the top of EfficientNet-Lite backbones; kept where "
                        "cross-validation says it beats the frozen recipe")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("classify", help="classify images with a trained result folder")
    p.add_argument("result")
    p.add_argument("images", nargs="+")
    p.add_argument("--top", type=int, default=3)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("imagenet", help="top-k ImageNet labels from the pretrained backbones")
    p.add_argument("images", nargs="+")
    p.add_argument("--backbones", type=_backbone_list, default=["efficientnet_lite0"])
    p.add_argument("--top", type=int, default=3)
    p.set_defaults(func=cmd_imagenet)

    p = sub.add_parser("export", help="a portable model as a zip (the results page's Download "
                       "model): the model, labels.txt, model.json and a predict.py")
    p.add_argument("result")
    p.add_argument("target", help="a backbone of the result, or 'ensemble'")
    p.add_argument("output", help="the zip to write")
    p.add_argument("--format", default="keras", choices=list(FORMATS),
                   help="keras (default), savedmodel, tflite, onnx or openvino")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("backbones", help="list backbones and whether their weights are here")
    p.set_defaults(func=cmd_backbones)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
