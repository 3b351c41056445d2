"""`imagerec export`: a run's network as an ONNX, OpenVINO or TorchScript file that carries its own preprocessing
record, optionally quantised to int8, and checked against eager PyTorch on real images before it is kept.

How each format is written is in `outputs.graphs`; this module checks the result and keeps or refuses it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagerec.errors import UserError
from imagerec.outputs.graphs import FORMATS, OPSET, export_record, metadata
from imagerec.outputs.parity import Parity, check_parity, parity_index
from imagerec.outputs.predict import load
from imagerec.outputs.quantize import calibration_images, quantize
from imagerec.outputs.runtimes import RUNTIMES, Exported
from imagerec.records import ExportRecord
from imagerec.runs import RunDir, open_run, temporary_folder, write_json

FP32_ATOL = 1e-3  # the largest difference of outputs (logits, scores, box pixels / 100) an fp32 export may show
FP32_MIN_AGREEMENT = 0.98  # the least share of top-1 labels, boxes or pixels an fp32 export must agree on
INT8_MAX_DROP = 0.01  # the largest metric drop (1 point) an int8 export may show on the validation split


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

    An fp32 export whose outputs differ by more than `atol` or whose decisions agree under FP32_MIN_AGREEMENT,
    or an int8 export whose metric drops by more than `max_drop`, is refused (the file is removed) unless `force`.
    The check is saved beside the file as `<file>.json` (`exports/<name>.json` in the run).
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
    record = export_record(sig, format, int8=int8, dynamic_batch=dynamic_batch, opset=opset)
    meta = metadata(predictor.info, record)
    with temporary_folder(dest.parent, prefix=".export-") as tmp:
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
    # The differences are measured on what matches (a detector's boxes): decisions that stop matching count too.
    if parity.agreement < FP32_MIN_AGREEMENT:
        return (
            f"{parity.agreement_name} with eager PyTorch is {parity.agreement:.1%} (limit {FP32_MIN_AGREEMENT:.0%}) on "
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
