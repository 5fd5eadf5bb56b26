"""`python -m zoo`: publish exports to the model zoo and list what it holds.

    python -m zoo publish runs/default/export --name synthetic-resnet18 [--zoo DIR] [--hf-repo ORG/NAME] [--force]
    python -m zoo publish runs/fusion_cpu/export --name synthetic-fusion   # members published with it
    python -m zoo publish runs/detector/export --name synthetic-detector   # a crop detector
    python -m zoo list [--zoo DIR]
    python -m zoo export-onnx NAME|EXPORT_DIR [--out PATH] [--opset N]   # docs/onnx.md

Published models load by name anywhere: `zoo.load("synthetic-resnet18")` or
`python eval.py models=[synthetic-resnet18]`, detectors as `data.crop.detector=synthetic-detector`;
every file's sha256 is checked first. A fusion model's members that are export folders are
published with it as `<name>.member<i>`, and it names them so.
"""
from __future__ import annotations

import argparse
import sys

import detectors  # noqa: F401  (registers the store's `detector` kind: detector exports publish too)
import zoo  # noqa: F401  (registers the store's `model` kind)
from core.errors import cli_entry
from core.store import list_entries, publish, store_root


def _table(root) -> str:
    models = list_entries(root)
    if not models:
        return f"the zoo at {store_root(root)} is empty: publish with `python -m zoo publish EXPORT --name NAME`"
    header = ("name", "kind", "architecture", "embed_dim", "classes", "input", "licence", "published")
    rows = [(m["name"], m.get("kind", "model"), m["architecture"], _cell(m["embed_dim"]), _cell(m["num_classes"]),
             f"{m['input_size']} px", m.get("licence", ""), m["published"]) for m in models]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    return "\n".join([f"zoo: {store_root(root)}", *lines])


def _cell(value) -> str:
    return "-" if value is None else str(value)


@cli_entry
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zoo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    pub = commands.add_parser("publish", help="copy an export into the zoo under a name, with a model card")
    pub.add_argument("export", help="an export folder (model.safetensors + config.json)")
    pub.add_argument("--name", required=True, help="zoo name: lowercase letters, digits, '.', '_', '-'")
    pub.add_argument("--zoo", default=None, help="zoo root (default $REIDZOO_ZOO or ~/.cache/reidzoo/zoo)")
    pub.add_argument("--force", action="store_true", help="replace a model already published under this name")
    pub.add_argument("--licence", default="other", help="licence of the weights for the model card (e.g. cc-by-4.0)")
    pub.add_argument("--hf-repo", default=None, help="also push to this Hugging Face Hub repo (ORG/NAME)")
    show = commands.add_parser("list", help="print the models of the zoo")
    show.add_argument("--zoo", default=None)
    onnx = commands.add_parser("export-onnx", help="write an image model's embedding forward as ONNX (docs/onnx.md)")
    onnx.add_argument("model", help="an export folder or a zoo name")
    onnx.add_argument("--out", default=None, help="the .onnx file (default <export>/model.onnx, or ./<name>.onnx)")
    onnx.add_argument("--opset", type=int, default=17, help="ONNX opset, 9 to 20 (default 17)")
    onnx.add_argument("--no-check", action="store_true", help="skip the onnxruntime vs torch comparison")
    args = parser.parse_args(argv)
    if args.command == "export-onnx":
        from zoo.onnx import export_onnx, summary_line

        print(summary_line(export_onnx(args.model, args.out, opset=args.opset, check=not args.no_check)))
        return
    if args.command == "list":
        print(_table(args.zoo))
        return
    entry = publish(args.export, args.name, root=args.zoo, force=args.force, licence=args.licence)
    folder = store_root(args.zoo) / entry["folder"]
    print(f"published {entry['name']}: {folder} ({len(entry['files'])} files, sha256 in {store_root(args.zoo) / 'zoo.json'})")
    if args.hf_repo:
        from zoo.huggingface import push

        print(f"pushed to {push(folder, args.hf_repo)}")


if __name__ == "__main__":
    main(sys.argv[1:])
