"""Exported graphs: how a run's network is written in each format (ONNX, OpenVINO, TorchScript) with its records
inside, and `in_memory`, the unchecked export `--runtime onnx|openvino|torchscript` runs a run directory with.

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
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn

from imagerec.errors import UserError
from imagerec.outputs.runtimes import EXPORT_KEY, MODEL_KEY, RUNTIMES, Exported, require
from imagerec.records import ExportRecord, ModelInfo
from imagerec.registry import Registry
from imagerec.tasks.base import ExportSignature, Task

OPSET = 17


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
        with warnings.catch_warnings(), torch.no_grad(), _silenced_stdout():
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


@contextlib.contextmanager
def _silenced_stdout() -> Iterator[None]:
    """The TorchScript-based exporter prints the whole traced graph to the process's stdout (from C++, so only the
    file descriptor can be redirected) when it fails; the one-line error says enough."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


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


def metadata(info: ModelInfo, record: ExportRecord) -> dict[str, str]:
    """What an exported file carries: the run's ModelInfo and the ExportRecord, as JSON strings."""
    return {MODEL_KEY: json.dumps(info.to_json()), EXPORT_KEY: record.model_dump_json()}


def export_record(sig: ExportSignature, format: str, *, int8: bool, dynamic_batch: bool, opset: int) -> ExportRecord:
    return ExportRecord(
        format=format, precision="int8" if int8 else "fp32", runs_in="int8" if int8 else "f32",
        inputs=list(sig.inputs), outputs=list(sig.outputs), axes=sig.axes, per_image=sig.per_image,
        batch=None if dynamic_batch or sig.per_image else 1, note=sig.note, agreement=sig.agreement,
        fixed=sig.fixed, opset=None if format == "torchscript" else opset, imagerec=version("imagerec"),
    )  # fmt: skip


def in_memory(task: Task, model: nn.Module, info: ModelInfo, runtime: str) -> nn.Module:
    """The eager `model` exported (fp32, dynamic batch, unchecked) and run by `runtime`: how
    `--runtime onnx|openvino|torchscript` runs a run directory. OpenVINO reads the ONNX graph directly."""
    format = "onnx" if runtime == "openvino" else runtime
    sig = task.export_signature(model, info, dynamic_batch=True)
    record = export_record(sig, format, int8=False, dynamic_batch=True, opset=OPSET)
    with tempfile.TemporaryDirectory(prefix="imagerec-export-") as tmp:
        written = Path(tmp) / f"model{FORMATS.get(format).suffix}"
        FORMATS.get(format).write(sig, metadata(info, record), written, OPSET)
        return RUNTIMES.get(runtime)(Exported(written, format, info, record))
