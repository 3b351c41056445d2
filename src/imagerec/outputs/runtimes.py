"""Runtimes: what runs a model at prediction time — eager PyTorch, torch.compile, ONNX Runtime, OpenVINO or
TorchScript. Each gives an `nn.Module` the tasks call exactly as they call the eager network, so results, output
formats and metrics never depend on the runtime.

An exported file carries its ModelInfo and ExportRecord inside (ONNX metadata properties, OpenVINO runtime info,
TorchScript extra files); `open_exported` reads them back and `graph_model` runs the file.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imagerec.errors import UserError
from imagerec.records import ExportRecord, ModelInfo
from imagerec.registry import Registry

Session = Callable[[np.ndarray], list[np.ndarray]]  # one input array in, the graph's outputs out
MODEL_KEY, EXPORT_KEY = "imagerec.model", "imagerec.export"  # metadata keys inside exported files
EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "openvino": "openvino", "nncf": "openvino"}


def require(module: str) -> Any:
    """Import an optional dependency, or one line naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module.split(".")[0], "deploy")
        raise UserError(f"{module} is not installed: pip install 'imagerec[{extra}]'") from None


class GraphModel(nn.Module):
    """An exported graph run by `session`, seen as the eager model it came from.

    A per-image graph (detectors) is called once per image and answers with the eager model's per-image dicts; a
    batch graph answers with its one output as a tensor, and a graph of fixed batch size is fed in chunks of it.
    """

    def __init__(self, session: Session, record: ExportRecord, *, runtime: str) -> None:
        super().__init__()
        self.session, self.record, self.runtime = session, record, runtime

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor]) -> Any:
        if self.record.per_image:
            return [self._one(image) for image in x]
        batch = _array(x)
        size = self.record.batch or len(batch)
        chunks = [self._batch(batch[i : i + size], size) for i in range(0, len(batch), size)]
        return torch.from_numpy(np.concatenate(chunks)) if chunks else torch.zeros(0)

    def _batch(self, chunk: np.ndarray, size: int) -> np.ndarray:
        short = size - len(chunk)  # a fixed-batch graph gets its last chunk padded with copies, then cut
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], short, axis=0)]) if short else chunk
        return self.session(padded)[0][: len(chunk)]

    def _one(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        found = self.session(_array(image))
        return {name: torch.from_numpy(np.asarray(v)) for name, v in zip(self.record.outputs, found, strict=True)}


def _array(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().float().numpy())


# --- sessions: one per runtime ---------------------------------------------------------------------------------------


def onnx_session(model: bytes | Path, *, threads: int | None = None) -> Session:
    """ONNX Runtime on the CPU (its session is safe to call from several threads)."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initialisers are not the user's concern
    if threads:
        options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda array: session.run(None, {name: array})


def openvino_session(model: Path, *, threads: int | None = None) -> tuple[Session, str]:
    """OpenVINO on the CPU, computing in f32: its default on CPUs with bf16 or AMX is bf16, which breaks fp32
    parity (a max difference of 0.012 on resnet18, issue 14). Returns the session and the precision it runs in."""
    ov = require("openvino")
    core = ov.Core()
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(core.read_model(str(model)), "CPU", config)
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    runs_in = hint.to_string() if hasattr(hint, "to_string") else str(hint)
    local = threading.local()  # an infer request serves one call at a time: one per thread

    def run(array: np.ndarray) -> list[np.ndarray]:
        if not hasattr(local, "request"):
            local.request = compiled.create_infer_request()
        local.request.infer({0: array})
        return [local.request.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))]

    return run, runs_in


def check_options(record: ExportRecord, options: Any) -> None:
    """Refuse prediction options an exported graph cannot honour: its suppression is frozen inside (`fixed`)."""
    fixed = record.fixed
    if not fixed:
        return
    if options.conf is not None and options.conf < fixed["min_conf"]:
        raise UserError(f"--conf {options.conf}: this export keeps boxes scoring at least {fixed['min_conf']}")
    frozen = {"--iou": (options.iou, fixed["iou"]), "--max-det": (options.max_det, fixed["max_det"])}
    changed = [name for name, (given, kept) in frozen.items() if given is not None and given != kept]
    changed += ["--agnostic-nms"] if options.agnostic else []
    if changed:
        raise UserError(
            f"{', '.join(changed)}: an exported detector suppresses boxes inside its graph (per class, IoU "
            f"{fixed['iou']}, at most {fixed['max_det']} boxes); predict with the run directory to change that"
        )


def torchscript_session(module: torch.jit.ScriptModule) -> Session:
    def run(array: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(torch.from_numpy(array))
        return [t.numpy() for t in (out if isinstance(out, tuple | list) else (out,))]

    return run


# --- reading exported files ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    """An exported file, its format and what it carries."""

    path: Path
    format: str
    info: ModelInfo
    record: ExportRecord


SUFFIXES = {".onnx": "onnx", ".xml": "openvino", ".torchscript": "torchscript"}


def is_exported(path: str | Path) -> bool:
    return Path(path).suffix in SUFFIXES and Path(path).is_file()


def open_exported(path: Path) -> Exported:
    """The ModelInfo and ExportRecord inside an exported file; a UserError when it has none or is damaged."""
    fmt = SUFFIXES.get(path.suffix)
    if fmt is None or not path.is_file():
        raise UserError(f"{path}: not an exported model (.onnx, .xml or .torchscript) or a run directory")
    try:
        meta = READERS[fmt](path)
    except UserError:
        raise
    except Exception as error:  # each runtime's own parse errors: the file is damaged or not a model
        raise UserError(f"{path}: cannot be read as {fmt} ({str(error).splitlines()[0][:200]}); re-export it") from None
    if MODEL_KEY not in meta or EXPORT_KEY not in meta:
        raise UserError(f"{path}: not exported by imagerec (no preprocessing record inside); export it with imagerec")
    from imagerec.records import parse_model_info

    info = parse_model_info(json.loads(meta[MODEL_KEY]), run=path)
    return Exported(path, fmt, info, ExportRecord.model_validate_json(meta[EXPORT_KEY]))


def _onnx_metadata(path: Path) -> dict[str, str]:
    onnx = require("onnx")
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _openvino_metadata(path: Path) -> dict[str, str]:
    ov = require("openvino")
    model = ov.Core().read_model(str(path))
    return {key: str(model.get_rt_info(["imagerec", key]).astype(str)) for key in (MODEL_KEY, EXPORT_KEY)
            if model.has_rt_info(["imagerec", key])}  # fmt: skip


def _torchscript_metadata(path: Path) -> dict[str, str]:
    files = {MODEL_KEY: "", EXPORT_KEY: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in files.items() if v}


READERS: dict[str, Callable[[Path], dict[str, str]]] = {
    "onnx": _onnx_metadata,
    "openvino": _openvino_metadata,
    "torchscript": _torchscript_metadata,
}


# --- runtimes --------------------------------------------------------------------------------------------------------

RUNTIMES: Registry[Callable[..., nn.Module]] = Registry("runtime")


@RUNTIMES.register("onnx")
def _onnx_runtime(exported: Exported, *, threads: int | None = None) -> nn.Module:
    if exported.format != "onnx":
        raise UserError(f"{exported.path}: --runtime onnx runs .onnx files; this is a {exported.format} export")
    return GraphModel(onnx_session(exported.path, threads=threads), exported.record, runtime="onnx")


@RUNTIMES.register("openvino")
def _openvino_runtime(exported: Exported, *, threads: int | None = None) -> nn.Module:
    if exported.format not in ("onnx", "openvino"):  # OpenVINO reads ONNX files as they are
        raise UserError(f"{exported.path}: --runtime openvino runs .xml or .onnx files, not {exported.format}")
    session, runs_in = openvino_session(exported.path, threads=threads)
    if exported.record.precision == "int8":
        runs_in = f"int8 in quantised layers, {runs_in} elsewhere"
    return GraphModel(session, exported.record.model_copy(update={"runs_in": runs_in}), runtime="openvino")


@RUNTIMES.register("torchscript")
def _torchscript_runtime(exported: Exported, *, threads: int | None = None) -> nn.Module:
    if exported.format != "torchscript":
        raise UserError(f"{exported.path}: --runtime torchscript runs .torchscript files, not {exported.format}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in torch 2.14 (docs/deploy.md)
        module = torch.jit.load(str(exported.path), map_location="cpu").eval()
    return GraphModel(torchscript_session(module), exported.record, runtime="torchscript")


EAGER_RUNTIMES = ("eager", "compile")  # run the run's own network; the others run an exported graph


def runtime_names() -> list[str]:
    return [*EAGER_RUNTIMES, *RUNTIMES.names()]


def compiled(model: nn.Module) -> nn.Module:
    """`torch.compile`d `model`: the first call compiles (seconds to a minute; the CPU backend needs a C++
    compiler)."""
    return torch.compile(model)
