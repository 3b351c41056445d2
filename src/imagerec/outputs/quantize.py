"""Post-training int8 quantisation of an exported file, calibrated on real images: NNCF for OpenVINO, ONNX
Runtime's static quantisation for ONNX. Neither is written here; this module feeds them the run's images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from imagerec.errors import UserError
from imagerec.evaluation import evaluation_index
from imagerec.outputs.predict import Predictor
from imagerec.outputs.runtimes import require
from imagerec.runs import RunDir

CALIBRATION_IMAGES = 300  # NNCF's default subset size


def calibration_images(run: RunDir, predictor: Predictor, calib: str | Path | None) -> list[np.ndarray]:
    """Up to CALIBRATION_IMAGES inputs of the exported graph, made from `calib` (default: the run's training
    images) exactly as the model sees them; a UserError when there are none or their classes are not the run's."""
    data = calib if calib is not None else run.read_config().get("data", {}).get("path")
    if data is None or not Path(data).exists():
        raise UserError(f"--int8 needs calibration images: pass --calib DATA (the run's data {data} is not here)")
    index = evaluation_index(run, data, split="train", classes=predictor.info.classes)  # a flat folder: all of it
    samples = index.samples("train")[:CALIBRATION_IMAGES]
    dataset = predictor.task.dataset(samples, info=predictor.info, augment=None, cache=False, coding=index.masks)
    per_image = predictor.task.export_signature(predictor.model, predictor.info, dynamic_batch=True).per_image
    images = [dataset[i][0] for i in range(len(dataset))]
    return [np.ascontiguousarray((image if per_image else image[None]).numpy()) for image in images]


def quantize(path: Path, format: str, arrays: list[np.ndarray], meta: dict[str, str]) -> None:
    """Replace the fp32 file at `path` by its int8 quantisation, calibrated on `arrays`, keeping `meta`."""
    try:
        {"onnx": _onnx_int8, "openvino": _openvino_int8}[format](path, arrays, meta)
    except UserError:
        raise
    except Exception as error:  # the quantisers' own failures: an operator they cannot quantise
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise UserError(f"--int8 --format {format}: quantisation failed ({first}); export fp32 instead") from None


def _openvino_int8(path: Path, arrays: list[np.ndarray], meta: dict[str, str]) -> None:
    ov, nncf = require("openvino"), require("nncf")
    model = ov.Core().read_model(str(path))
    quantized = nncf.quantize(model, nncf.Dataset(arrays), subset_size=len(arrays))
    for key, value in meta.items():
        quantized.set_rt_info(value, ["imagerec", key])
    # Written beside, then renamed: OpenVINO maps the fp32 weights file, and overwriting it in place kills the
    # process (SIGBUS).
    output = path.with_name(f"int8-{path.name}")
    ov.save_model(quantized, str(output), compress_to_fp16=False)
    del model, quantized
    os.replace(output.with_suffix(".bin"), path.with_suffix(".bin"))
    os.replace(output, path)


def _onnx_int8(path: Path, arrays: list[np.ndarray], meta: dict[str, str]) -> None:
    onnx = require("onnx")
    quantization = require("onnxruntime.quantization")
    name = onnx.load(str(path), load_external_data=False).graph.input[0].name

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(arrays)

        def get_next(self) -> dict[str, np.ndarray] | None:
            array = next(self.items, None)
            return None if array is None else {name: array}

    # x86 CPUs run u8 activations × s8 weights (VNNI/AVX2); QDQ is the format ONNX Runtime optimises.
    output = path.with_name(f"int8-{path.name}")
    quantization.quantize_static(
        str(path), str(output), Reader(), quant_format=quantization.QuantFormat.QDQ, per_channel=True,
        activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
    )  # fmt: skip
    model = onnx.load(str(output))
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(output))
    os.replace(output, path)
