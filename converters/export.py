"""Export a converted (or trained) DeepLab model to ONNX, checked against PyTorch with onnxruntime.

Examples (from the repository root):

  deeplab-export --weights data/models/deeplabv2_resnet101/deeplabv2_resnet101_msc_voc12.pth --out voc12.onnx
  deeplab-export --weights W.pth --out m.onnx --dynamic
  deeplab-export --weights W.pth --model deeplabv3plus_xception65 --num-classes 21 --height 513 --width 513 --out m.onnx

The model name, class count and output stride come from the provenance JSON beside the weights
unless given. The ONNX graph takes the *preprocessed* NCHW float32 image (input ``image``) and
returns the model's eval-mode logits (output ``logits``, at the network's output resolution, not
resized to the input): exactly what the PyTorch model's ``forward`` does. The preprocessing
contract (channel order, mean, std, scale, padding, how to resize the logits) is written into the
model's ``metadata_props`` (key ``preprocessing`` as JSON, plus one key per field).

``--height/--width`` (default: the contract's test crop, 513) fixes the spatial size; ``--dynamic``
exports a graph for any size. The batch size is always free. Before the file is renamed into
place the exported graph runs in onnxruntime next to PyTorch (two input sizes with ``--dynamic``;
with a fixed size, batch 1 and 2): max |onnx - torch| / max |torch| <= 1e-4 and argmax agreement
>= 99.9 % on the pixels whose top-2 margin exceeds that tolerance, else nothing is written.
The exporter is torch.onnx's dynamo-based one (``torch.export``), which keeps the sizes symbolic:
TF ``SAME`` padding, Caffe's ceil-mode pooling and MSC resizing, and ``align_corners`` resizes
are computed from the actual input size in the graph.

Exit codes: 0 success, 1 bad input (one line on stderr, no output file), 2 usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # run as a file: re-run as `python -m converters.<name>`
    import as_module
    as_module.rerun(__file__)

from converters import __version__
from converters.cli import run_main
from converters.errors import ConversionError, DeeplabError

OPSET = 18
INPUT_NAME, OUTPUT_NAME = "image", "logits"
REL_TOL = 1e-4  # max |onnx - torch| / max |torch|
ARGMAX_MIN = 0.999  # agreement on pixels whose top-2 margin exceeds REL_TOL * max |torch|
FORMAT = "deeplab-repro onnx v1"

__all__ = ["ParityRow", "check_parity", "export_onnx", "main", "metadata_for", "other_size", "read_metadata"]


@dataclass(frozen=True)
class ParityRow:
    """One onnxruntime-vs-PyTorch comparison."""

    batch: int
    height: int
    width: int
    output_shape: tuple[int, ...]
    max_rel_diff: float
    argmax_agree: float  # on the pixels with a margin
    margin_pixels: float  # fraction of pixels whose top-2 margin exceeds the tolerance
    ok: bool


def other_size(n: int) -> int:
    """A second check size for dynamic graphs: about 3/4 of ``n`` with the other parity (TF SAME pads differ)."""
    m = max((3 * n) // 4, 17)
    return m if (m - n) % 2 else m + 1


def _onnx_program(model: Any, example: Any, *, dynamic: bool, opset: int) -> Any:
    import torch

    dim = torch.export.Dim
    axes = {0: dim.DYNAMIC, 2: dim.DYNAMIC, 3: dim.DYNAMIC} if dynamic else {0: dim.DYNAMIC}
    import contextlib
    import io
    import logging
    import warnings

    # the exporter reports its progress on stdout and logs optional-op notes; keep our output to our lines
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return torch.onnx.export(
                model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes={"x": axes}, opset_version=opset, optimize=True, verbose=False,
            )
    finally:
        log.setLevel(level)


def _session(path: Path) -> Any:
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _sample(preprocessing: Any, batch: int, height: int, width: int, seed: int) -> Any:
    """``batch`` random RGB uint8 images made into model input by the weights' own contract."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batch, height, width, 3), dtype=np.uint8)
    return torch.cat([preprocessing.apply(img) for img in images])


def check_parity(model: Any, onnx_path: Path, cases: Sequence[tuple[int, int, int]], preprocessing: Any, *,
                 seed: int = 0) -> list[ParityRow]:
    """Run ``onnx_path`` in onnxruntime and ``model`` in PyTorch on the same inputs, one row per (N, H, W)."""
    import numpy as np
    import torch

    session = _session(onnx_path)
    rows = []
    for i, (n, h, w) in enumerate(cases):
        x = _sample(preprocessing, n, h, w, seed + i)
        with torch.no_grad():
            ref = model(x).float().numpy()
        out = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if out.shape != ref.shape:
            rows.append(ParityRow(n, h, w, tuple(out.shape), float("inf"), 0.0, 0.0, False))
            continue
        scale = float(np.abs(ref).max()) or 1.0
        rel = float(np.abs(out - ref).max()) / scale
        top2 = np.sort(ref, axis=1)[:, -2:]
        sure = (top2[:, 1] - top2[:, 0]) > REL_TOL * scale
        agree = out.argmax(1) == ref.argmax(1)
        agreement = float(agree[sure].mean()) if sure.any() else 1.0
        rows.append(ParityRow(n, h, w, tuple(out.shape), rel, agreement, float(sure.mean()),
                              rel <= REL_TOL and agreement >= ARGMAX_MIN))
    return rows


def metadata_for(loaded: Any, *, dynamic: bool, height: int | None, width: int | None,
                 opset: int) -> dict[str, str]:
    """``metadata_props`` of the exported model: the preprocessing contract and where the weights came from."""
    import torch

    pre = loaded.preprocessing.to_dict()
    prov = loaded.provenance or {}
    stride = loaded.logits_stride
    size = "any H x W" if dynamic else f"{height} x {width}"
    meta = {
        "format": FORMAT,
        "model": loaded.name,
        "num_classes": str(loaded.num_classes),
        "build_kwargs": json.dumps(loaded.build_kwargs, sort_keys=True),
        "input": f"{INPUT_NAME}: float32 N x 3 x H x W ({size}), the image after the preprocessing contract",
        "output": (f"{OUTPUT_NAME}: float32 N x {loaded.num_classes} x h x w at stride {stride} "
                   f"(not resized to the input); to labels: resize bilinearly with align_corners=True to the "
                   f"padded input size, crop, argmax over axis 1"),
        "logits_stride": str(stride),
        "preprocessing": json.dumps(pre),
        "channel_order": str(pre["channel_order"]),
        "mean": json.dumps(list(pre["mean"])),
        "std": json.dumps(list(pre["std"])),
        "scale": json.dumps(pre["scale"]),
        "test_crop": str(pre["test_crop"]),
        "pad": str(pre["pad"]),
        "resize": str(pre["resize"]),
        "preprocessing_source": loaded.preprocessing_source,
        "weights_file": Path(loaded.weights).name,
        "weights_sha256": str((prov.get("weights") or {}).get("sha256") or _sha256(loaded.weights)),
        "release": str(prov.get("release") or ""),
        "dynamic": json.dumps(dynamic),
        "exporter": f"converters/export.py {__version__}, torch {torch.__version__} (dynamo), opset {opset}",
    }
    return meta


def _sha256(path: Path) -> str:
    from converters.io import sha256_file

    return sha256_file(path)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def export_onnx(model: Any, out: Path, *, preprocessing: Any, metadata: Mapping[str, str], dynamic: bool,
                height: int, width: int, check_cases: Sequence[tuple[int, int, int]] | None = None,
                opset: int = OPSET, log: Any = None) -> list[ParityRow]:
    """Export ``model`` (eval mode) to ``out`` atomically, after the onnxruntime parity check passes.

    ``height``/``width``: the traced size (the graph's fixed size unless ``dynamic``).
    ``check_cases``: (batch, H, W) to compare at; default two sizes when dynamic (``height x width``
    at batch 1 and :func:`other_size` at batch 2), else the fixed size at batch 1 and 2.
    Raises :class:`ConversionError` when the graph does not match (nothing is written).
    """
    import torch

    from converters.io import atomic_path

    def say(msg: str) -> None:
        if log is not None:
            log(msg)

    model = model.eval()
    if check_cases is None:
        check_cases = ([(1, height, width), (2, other_size(height), other_size(width) + 2)] if dynamic
                       else [(1, height, width), (2, height, width)])
    if not dynamic and any((h, w) != (height, width) for _, h, w in check_cases):
        raise ValueError("a fixed-size graph can only be checked at its own size")
    example = _sample(preprocessing, 2, height, width, seed=12345)  # batch 2: a batch of 1 would be frozen
    t0 = time.time()
    say(f"exporting {'dynamic' if dynamic else f'{height}x{width}'} graph (torch.export + onnxscript) ...")
    try:
        with torch.no_grad():
            program = _onnx_program(model, example, dynamic=dynamic, opset=opset)
    except Exception as e:  # noqa: BLE001 - an exporter failure is one line naming the model
        first = " ".join(str(e).split())[:300]
        raise ConversionError(out, f"torch.onnx.export failed ({type(e).__name__}: {first})") from None
    for key, value in metadata.items():
        program.model.metadata_props[key] = str(value)
    say(f"exported in {time.time() - t0:.0f} s; checking against PyTorch in onnxruntime at "
        + ", ".join(f"{n}x3x{h}x{w}" for n, h, w in check_cases))
    try:
        with atomic_path(out) as tmp:
            program.save(tmp, external_data=False)
            rows = check_parity(model, tmp, check_cases, preprocessing)
            bad = [r for r in rows if not r.ok]
            if bad:
                r = bad[0]
                raise ConversionError(out, f"onnxruntime disagrees with PyTorch at {r.batch}x3x{r.height}x{r.width}: "
                                      f"max rel diff {r.max_rel_diff:.2e} (<= {REL_TOL:g}), argmax agreement "
                                      f"{100 * r.argmax_agree:.3f}% (>= {100 * ARGMAX_MIN:g}%); nothing written")
    except OSError as e:
        raise ConversionError(out, f"cannot write ({e.strerror or e})") from None
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deeplab-export",
        description="Export DeepLab weights to ONNX (input: the preprocessed NCHW image; output: the model's "
                    "logits). The graph is checked against PyTorch in onnxruntime before it is written; the "
                    "preprocessing contract goes into the ONNX metadata.",
        epilog="Model name, classes and output stride default to the provenance JSON beside the weights. "
               "Needs the onnx extra: pip install -e .[onnx]",
    )
    parser.add_argument("--weights", type=Path, required=True, help="weights (.pth or .safetensors)")
    parser.add_argument("--model", help="registered model name (default: the provenance's architecture)")
    parser.add_argument("--num-classes", type=int, help="number of classes (default: provenance or the weights)")
    parser.add_argument("--output-stride", type=int, choices=(8, 16),
                        help="v3/v3+ output stride (default: provenance, else the model's default)")
    parser.add_argument("--out", type=Path, required=True, help="output .onnx file")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--height", type=int, help="fixed input height (default: the contract's test crop)")
    size.add_argument("--dynamic", action="store_true", help="any input height and width (checked at two sizes)")
    parser.add_argument("--width", type=int, help="fixed input width (default: the height)")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    return parser


def _output_stride_from(record: Mapping[str, Any] | None) -> int | None:
    if not record:
        return None
    value = record.get("output_stride") or (record.get("model_kwargs") or {}).get("output_stride")
    return int(value) if value else None


def run(args: argparse.Namespace) -> Path:
    """Export as ``args`` say; return the ONNX path. Raises ConversionError for bad input."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise DeeplabError(f"{e.name} is not installed; pip install -e .[onnx]") from None
    from converters.io import provenance_path
    from converters.provenance import read_provenance
    from reproduce.inference import InferenceError, load_model

    out: Path = args.out
    if out.suffix != ".onnx":
        raise ConversionError(out, "output must end in .onnx")
    if out.resolve() == args.weights.resolve():
        raise ConversionError(out, "output would overwrite the weights")
    try:  # before minutes of export: the folder must take the file
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConversionError(out, f"cannot create the output folder ({e.strerror or e})") from None
    if not os.access(out.parent, os.W_OK):
        raise ConversionError(out, "the output folder is not writable")
    record = None
    prov = provenance_path(args.weights)
    if prov.is_file() and prov != args.weights:
        record = read_provenance(prov)
    output_stride = args.output_stride or _output_stride_from(record)
    try:
        try:
            loaded = load_model(args.model, args.weights, num_classes=args.num_classes, output_stride=output_stride)
        except InferenceError as e:
            if args.output_stride is None and output_stride is not None and "takes no output stride" in str(e):
                loaded = load_model(args.model, args.weights, num_classes=args.num_classes)
            else:
                raise
    except InferenceError as e:
        raise DeeplabError(str(e)) from None
    height = args.height or loaded.preprocessing.test_crop
    width = args.width or height
    if min(height, width) < 17 or max(height, width) > 4096:
        raise DeeplabError(f"input size {height}x{width} is outside 17..4096")
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    meta = metadata_for(loaded, dynamic=args.dynamic, height=None if args.dynamic else height,
                        width=None if args.dynamic else width, opset=args.opset)
    rows = export_onnx(loaded.model, out, preprocessing=loaded.preprocessing, metadata=meta, dynamic=args.dynamic,
                       height=height, width=width, opset=args.opset, log=log)
    if not args.quiet:
        print(f"{'input':<16} {'output':<20} {'max rel diff':>12} {'argmax agree':>13}  ok")
        for r in rows:
            shape = "x".join(map(str, r.output_shape))
            print(f"{r.batch}x3x{r.height}x{r.width:<8} {shape:<20} {r.max_rel_diff:>12.2e} "
                  f"{100 * r.argmax_agree:>12.3f}%  {'yes' if r.ok else 'NO'}")
        print(json.dumps({"onnx": str(out), "model": loaded.name, "num_classes": loaded.num_classes,
                          "dynamic": args.dynamic, "parity": [asdict(r) for r in rows]}))
        print(f"wrote {out}", file=sys.stderr)
    return out


def check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage rules (exit 2)."""
    if args.dynamic and args.width is not None:
        parser.error("--width fixes the size; it cannot go with --dynamic")
    if args.width is not None and args.height is None:
        parser.error("--width needs --height")


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), run, argv, check=check_usage)


if __name__ == "__main__":
    sys.exit(main())
