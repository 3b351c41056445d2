"""`imagerec export`: a run's network as an ONNX, OpenVINO or TorchScript file that carries its own preprocessing
record, optionally quantised to int8, and checked against eager PyTorch on real images before it is kept.

The ONNX graph is made by torch.onnx's TorchScript-based exporter (`dynamo=False`): it is the one torchvision
tests its detectors with (their suppression and box mapping are data-dependent and trace into ONNX's
NonMaxSuppression), and it exports resnet18 in 0.5 s against 7 s for the dynamo exporter here. OpenVINO files are
converted from that ONNX graph by OpenVINO's own converter, so the two formats cannot disagree on what was traced.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imagerec.errors import UserError
from imagerec.outputs.parity import Parity, check_parity, parity_index
from imagerec.outputs.predict import Predictor, load
from imagerec.outputs.quantize import calibration_images, quantize
from imagerec.outputs.runtimes import EXPORT_KEY, MODEL_KEY, RUNTIMES, Exported, require
from imagerec.records import ExportRecord
from imagerec.registry import Registry
from imagerec.runs import RunDir, open_run, write_json
from imagerec.tasks.base import ExportSignature

OPSET = 17
FP32_ATOL = 1e-3  # the largest difference of outputs (logits, scores, box pixels / 100) an fp32 export may show
INT8_MAX_DROP = 0.01  # the largest metric drop (1 point) an int8 export may show on the validation split


@dataclass(frozen=True)
class Format:
    """An export format: the file suffix, the runtime that runs it by default, and its writer."""

    suffix: str
    runtime: str
    write: Callable[[ExportSignature, dict[str, str], Path, int], None]


FORMATS: Registry[Format] = Registry("export format")


def _trace_onnx(sig: ExportSignature, dest: Path, opset: int) -> None:
    """The ONNX graph of `sig`, or one line naming what ONNX cannot express.

    A batch graph the TorchScript-based exporter cannot express (e.g. adaptive pooling to a size that does not
    divide its input, as seed_cnn at 8 px) is exported again by the dynamo exporter, which decomposes such ops.
    """
    require("onnx")
    # nn.MultiheadAttention's inference fast path (ViT, Swin's heads) traces to one fused operator that ONNX has no
    # form for (aten::_native_multi_head_attention); the standard path computes the same and exports.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python values frozen in the graph
            torch.onnx.export(
                sig.graph, (sig.example,), str(dest), dynamo=False, opset_version=opset,
                input_names=list(sig.inputs), output_names=list(sig.outputs), dynamic_axes=sig.axes or None,
            )  # fmt: skip
    except Exception as error:  # the exporter's errors name the operator ("Exporting the operator 'aten::…'")
        if sig.per_image:
            raise UserError(
                f"cannot export to ONNX opset {opset}: {_first_line(error)}; try --format torchscript"
            ) from None
        _dynamo_onnx(sig, dest, opset, first_error=_first_line(error))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _dynamo_onnx(sig: ExportSignature, dest: Path, opset: int, *, first_error: str) -> None:
    dims = {axis: torch.export.Dim(name) for axis, name in sig.axes.get(sig.inputs[0], {}).items()}
    try:
        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                sig.graph, (sig.example,), str(dest), dynamo=True, opset_version=max(opset, 18),
                input_names=list(sig.inputs), output_names=list(sig.outputs), dynamic_shapes=(dims,),
            )  # fmt: skip
    except Exception as error:
        raise UserError(
            f"cannot export to ONNX opset {opset}: {first_error}; the dynamo exporter failed too: {_first_line(error)}"
        ) from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def _write_onnx(sig: ExportSignature, meta: dict[str, str], dest: Path, opset: int) -> None:
    onnx = require("onnx")
    _trace_onnx(sig, dest, opset)
    model = onnx.load(str(dest))
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(dest))


def _write_openvino(sig: ExportSignature, meta: dict[str, str], dest: Path, opset: int) -> None:
    ov = require("openvino")
    graph = dest.with_suffix(".onnx")
    _trace_onnx(sig, graph, opset)
    model = ov.convert_model(str(graph))
    graph.unlink()
    for key, value in meta.items():
        model.set_rt_info(value, ["imagerec", key])
    ov.save_model(model, str(dest), compress_to_fp16=False)  # fp16 weights would break fp32 parity


def _write_torchscript(sig: ExportSignature, meta: dict[str, str], dest: Path, opset: int) -> None:
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(sig.graph, (sig.example,), check_trace=False)
    except Exception as error:
        raise UserError(f"cannot trace to TorchScript: {_first_line(error)}") from None
    torch.jit.save(traced, str(dest), _extra_files=meta)


FORMATS.add("onnx", Format(".onnx", "onnx", _write_onnx))
FORMATS.add("openvino", Format(".xml", "openvino", _write_openvino))
FORMATS.add("torchscript", Format(".torchscript", "torchscript", _write_torchscript))


@dataclass(frozen=True)
class ExportResult:
    """What `export` wrote (`path`, None when refused) and what its check measured."""

    path: Path | None
    record: ExportRecord
    parity: Parity
    refused: str | None  # why the file was not kept

    def to_dict(self) -> dict[str, Any]:
        return {"path": None if self.path is None else str(self.path), "refused": self.refused,
                "export": self.record.model_dump(mode="json"), "check": self.parity.to_dict()}  # fmt: skip


def export(
    run: str | Path | RunDir,
    *,
    format: str = "onnx",
    out: str | Path | None = None,
    dynamic_batch: bool = True,
    int8: bool = False,
    calib: str | Path | None = None,
    check: str | Path | None = None,
    check_images: int = 200,
    atol: float = FP32_ATOL,
    max_drop: float = INT8_MAX_DROP,
    force: bool = False,
    opset: int = OPSET,
) -> ExportResult:
    """Export `run` to `format` (`onnx`, `openvino` or `torchscript`), at int8 with `int8` (calibrated on `calib`,
    default the run's training images), then check it against eager PyTorch on up to `check_images` images of
    `check` (default: the run's validation split).

    An fp32 export whose outputs differ by more than `atol`, or an int8 export whose metric drops by more than
    `max_drop`, is refused (the file is removed) unless `force`. The check is saved beside the file as
    `<file>.json` (`exports/<name>.json` in the run).
    """
    run_dir = run if isinstance(run, RunDir) else open_run(run)
    spec = FORMATS.get(format)
    if int8 and format == "torchscript":
        raise UserError("--int8: TorchScript exports stay fp32; quantise with --format openvino or --format onnx")
    predictor = load(run_dir, device="cpu")
    sig = predictor.task.export_signature(predictor.model, predictor.info, dynamic_batch=dynamic_batch)
    index, split = parity_index(run_dir, predictor.info, check)
    calibration = calibration_images(run_dir, predictor, calib) if int8 else None
    dest = Path(out) if out is not None else run_dir.path / "exports" / f"model{'-int8' if int8 else ''}{spec.suffix}"
    if dest.suffix != spec.suffix:
        raise UserError(f"--out {dest}: a {format} export is a {spec.suffix} file")
    record = _record(sig, format, int8=int8, dynamic_batch=dynamic_batch, opset=opset)
    meta = {MODEL_KEY: json.dumps(predictor.info.to_json()), EXPORT_KEY: record.model_dump_json()}
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".export-") as tmp:
        written = Path(tmp) / dest.name
        spec.write(sig, meta, written, opset)
        if calibration is not None:
            quantize(written, format, calibration, meta)
        exported = Exported(written, format, predictor.info, record)
        graph = RUNTIMES.get(spec.runtime)(exported)
        record = graph.record  # the runtime states the precision it computes in
        parity = check_parity(predictor.task, predictor.model, graph, predictor.info, index, split, check_images)
        refused = refusal(parity, int8=int8, atol=atol, max_drop=max_drop)
        if refused is None or force:
            _move_into_place(written, dest)
    result = ExportResult(None if refused and not force else dest, record, parity, refused)
    write_json(dest.with_name(dest.name + ".json"), result.to_dict())
    return result


def _record(sig: ExportSignature, format: str, *, int8: bool, dynamic_batch: bool, opset: int) -> ExportRecord:
    from imagerec import __version__

    return ExportRecord(
        format=format, precision="int8" if int8 else "fp32", runs_in="int8" if int8 else "f32",
        inputs=list(sig.inputs), outputs=list(sig.outputs), axes=sig.axes, per_image=sig.per_image,
        batch=None if dynamic_batch or sig.per_image else 1, note=sig.note, agreement=sig.agreement,
        fixed=sig.fixed, opset=None if format == "torchscript" else opset, imagerec=__version__,
    )  # fmt: skip


def refusal(parity: Parity, *, int8: bool, atol: float, max_drop: float) -> str | None:
    """Why the export must not be kept, or None."""
    if int8:
        if parity.metric_drop > max_drop:
            return (
                f"int8 {parity.metric} is {parity.metric_drop:.4f} below fp32's on {parity.images} images "
                f"(limit {max_drop}); calibrate on more images with --calib, or keep fp32"
            )
        return None
    if parity.max_abs > atol:
        return (
            f"outputs differ from eager PyTorch by up to {parity.max_abs:.2e} (limit {atol:.0e}) on "
            f"{parity.images} images; report it, or keep the file anyway with --force"
        )
    return None


def _move_into_place(written: Path, dest: Path) -> None:
    """Rename the checked files over `dest` (OpenVINO's weights file first, so the .xml never points at an old
    one)."""
    weights = written.with_suffix(".bin")
    if weights.exists():
        os.replace(weights, dest.with_suffix(".bin"))
    os.replace(written, dest)


def in_memory(predictor: Predictor, runtime: str) -> nn.Module:
    """The eager `predictor`'s network exported (fp32, dynamic batch, unchecked) and run by `runtime`: how
    `--runtime onnx|openvino|torchscript` runs a run directory. OpenVINO reads the ONNX graph directly."""
    format = "onnx" if runtime == "openvino" else runtime
    sig = predictor.task.export_signature(predictor.model, predictor.info, dynamic_batch=True)
    record = _record(sig, format, int8=False, dynamic_batch=True, opset=OPSET)
    meta = {MODEL_KEY: json.dumps(predictor.info.to_json()), EXPORT_KEY: record.model_dump_json()}
    with tempfile.TemporaryDirectory(prefix="imagerec-export-") as tmp:
        written = Path(tmp) / f"model{FORMATS.get(format).suffix}"
        FORMATS.get(format).write(sig, meta, written, OPSET)
        return RUNTIMES.get(runtime)(Exported(written, format, predictor.info, record))
