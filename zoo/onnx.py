"""ONNX export of an image model's embedding forward: `python -m zoo export-onnx NAME|EXPORT_DIR`.

The graph is what evaluation extracts (`ReIDModel.embed`, as engine/extraction.py calls it): input
`images`, float32 (N, 3, S, S) at the model's input size, already normalised; output `embeddings`,
float32 (N, D), L2-normalised. The batch axis is dynamic. For a classifier the embedding is the
pooled penultimate features, for a Siamese model its embedder branch (the pair head is not exported).
The preprocessing (input size, mean, std) and what the model is go into the ONNX model's
`metadata_props` (`read_metadata`).

After export the written graph is run by onnxruntime on random batches of a size other than the
traced one and compared with torch: a max abs difference over `TOLERANCE` (float32) fails the
export, and the file is written atomically only once the check passed.

Where the file goes: `<export_dir>/model.onnx` for an export folder (a later export into that
folder replaces it with the rest); for a zoo name, `--out`, else `./<name>.onnx` in the working
directory (published folders are checksummed: nothing is written into them).

The exporter is torch's TorchScript one (`dynamo=False`): with torch 2.14 it exports the timm
backbones the zoo uses (ResNet, EfficientNet, ConvNeXt, ViT, Swin) offline, faster than the
torch.export-based one (docs/onnx.md), and needs only `onnx` (plus `onnxruntime` for the check), not onnxscript.
"""
from __future__ import annotations

import importlib
import io
import json
import re
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from core.errors import ConfigError, UserError
from core.files import atomic_write_bytes
from zoo.base import ReIDModel
from zoo.checksum import model_checksum
from zoo.export import ONNX_FILE, inner_module
from zoo.loading import load_model

DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 9, 20  # what torch's TorchScript exporter supports
TOLERANCE = 1e-4  # max abs difference between onnxruntime and torch, float32 embeddings
TRACE_BATCH = 2
CHECK_BATCHES = (1, 3)  # sizes other than the traced one: a batch size baked into the graph fails
INSTALL = 'pip install -e ".[onnx]"'


class EmbeddingGraph(nn.Module):
    """images -> L2-normalised embeddings, the forward that gets exported."""

    def __init__(self, model: ReIDModel):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images)


def _require(package: str, why: str) -> Any:
    try:
        return importlib.import_module(package)
    except ImportError as err:
        raise UserError(f"ONNX export needs the {package} package {why}, and it is not installed ({err}): "
                        f"{INSTALL} installs it") from err


def default_out(spec: str) -> Path:
    """`<export_dir>/model.onnx` for an export folder, else `./<name>.onnx` (characters other than
    letters, digits, '.', '_', '-' of the name replaced by '_')."""
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return folder / ONNX_FILE
    return Path.cwd() / (re.sub(r"[^A-Za-z0-9._-]+", "_", spec).strip("._") + ".onnx")


def _target(spec: str, out: Union[str, Path, None]) -> Path:
    if out is None:
        return default_out(spec)
    target = Path(out).expanduser()
    if target.is_dir():
        return target / default_out(spec).name
    if target.exists() and target.suffix.lower() != ".onnx":
        raise ConfigError(f"--out {target} exists and is not an .onnx file: choose another path; nothing was written")
    return target


def export_onnx(spec: Union[str, Path], out: Union[str, Path, None] = None, *, opset: int = DEFAULT_OPSET,
                check: bool = True) -> Path:
    """Export the image -> embedding forward of `spec` (an export folder or a zoo name; a timm name
    works too) to ONNX; returns the path written.

    `check`: run the written graph with onnxruntime and compare with torch (needs onnxruntime);
    the max abs difference is recorded in the metadata as `check_max_abs_diff`, and over
    `TOLERANCE` nothing is written. A fusion model is refused: it reads its members' embeddings,
    not images.
    """
    spec = str(spec)
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"ONNX opset must be an integer from {MIN_OPSET} to {MAX_OPSET}, got {opset!r}")
    onnx = _require("onnx", "(to write the model's metadata)")
    ort = _require("onnxruntime", "(to check the export against torch; --no-check skips that)") if check else None
    target = _target(spec, out)
    loaded, _ = load_model(spec)
    model = inner_module(loaded)
    if not isinstance(model, ReIDModel):
        raise ConfigError(f"model {spec} is not a reidzoo model ({type(model).__name__}): nothing to export")
    if model.inputs != "images":
        members = ", ".join(str(m.get("spec")) for m in getattr(model, "members", []))
        raise ConfigError(
            f"model {spec} is a `{model.architecture}` model: it reads its members' embeddings "
            f"({model.inputs}), not images, so it has no image -> embedding graph to export. Export its "
            f"members instead ({members or 'see its config.json'}), each with `python -m zoo export-onnx MEMBER`")
    model = model.cpu().float().eval()
    graph = EmbeddingGraph(model).eval()
    size = int(model.input_size)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(TRACE_BATCH, 3, size, size, generator=generator)

    proto = onnx.load_from_string(_export_bytes(graph, example, spec, opset))
    info = metadata(model, spec, opset)
    if check:
        diff = _compare(ort, proto.SerializeToString(), graph, size, generator)
        if not diff <= TOLERANCE:
            raise UserError(f"the ONNX export of {spec} does not reproduce torch: max abs difference {diff:.3g} "
                            f"> {TOLERANCE:g} on float32 embeddings; nothing was written (another --opset may help)")
        info["check_max_abs_diff"] = f"{diff:.3g}"
    onnx.helper.set_model_props(proto, info)
    proto.doc_string = (f"reidzoo {model.architecture} {spec}: images (N, 3, {size}, {size}) float32, normalised "
                        f"with mean {info['mean']} std {info['std']} -> embeddings (N, {model.embed_dim}), L2-normalised")
    atomic_write_bytes(target, proto.SerializeToString())
    return target


def _export_bytes(graph: nn.Module, example: torch.Tensor, spec: str, opset: int) -> bytes:
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter is chosen on purpose (see the module docstring); timm's
            # shape assertions are traced as constants, right for the fixed input size.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(graph, (example,), buffer, dynamo=False, opset_version=opset,
                              input_names=["images"], output_names=["embeddings"],
                              dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}})
    except (RuntimeError, ValueError, TypeError, torch.onnx.errors.OnnxExporterError) as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"torch could not export {spec} to ONNX opset {opset}: {first_line} "
                        f"(a newer --opset, up to {MAX_OPSET}, may help); nothing was written") from err
    return buffer.getvalue()


def _compare(ort: Any, model_bytes: bytes, graph: nn.Module, size: int, generator: torch.Generator,
             batches: Sequence[int] = CHECK_BATCHES) -> float:
    """Max abs difference between onnxruntime's and torch's embeddings of random batches."""
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    worst = 0.0
    for n in batches:
        images = torch.randn(n, 3, size, size, generator=generator)
        with torch.no_grad():
            expected = graph(images).numpy()
        got = session.run(["embeddings"], {"images": images.numpy()})[0]
        if got.shape != expected.shape:
            return float("inf")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def metadata(model: ReIDModel, spec: str, opset: int) -> Dict[str, str]:
    """The ONNX model's metadata_props: what a user needs to preprocess and to know the model."""
    return {
        "source": spec,
        "architecture": model.architecture,
        "model_checksum": model_checksum(model),
        "input_size": str(model.input_size),
        "mean": json.dumps([float(v) for v in model.mean]),
        "std": json.dumps([float(v) for v in model.std]),
        "embed_dim": str(model.embed_dim),
        "opset": str(opset),
        "input": f"images: float32 (N, 3, {model.input_size}, {model.input_size}), RGB, resized to input_size x "
                 "input_size (reidzoo: cv2.INTER_AREA), scaled to [0, 1], then (x - mean) / std per channel",
        "output": f"embeddings: float32 (N, {model.embed_dim}), L2-normalised: compare by inner product",
    }


def read_metadata(path: Union[str, Path]) -> Dict[str, str]:
    """The metadata_props of an ONNX file (the weights are not read)."""
    onnx = _require("onnx", "(to read the model's metadata)")
    proto = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in proto.metadata_props}


def summary_line(path: Path, info: Optional[Dict[str, str]] = None) -> str:
    """One line for the command line: what was written and how it was checked."""
    info = read_metadata(path) if info is None else info
    size, dim = info["input_size"], info["embed_dim"]
    check = (f"onnxruntime vs torch max abs difference {info['check_max_abs_diff']}"
             if "check_max_abs_diff" in info else "not checked with onnxruntime")
    return (f"wrote {path}: images (N, 3, {size}, {size}) -> embeddings (N, {dim}), opset {info['opset']}; "
            f"mean {info['mean']}, std {info['std']}; {check}")
