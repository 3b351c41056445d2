"""GPU speed: training throughput per precision and memory format, and exported-runtime inference against eager.

Part 1 (training). What is measured is one whole training step as imagerec's engine runs it, on one fixed batch
already on the device (decoding and the DataLoader are left out: this measures the model and its arithmetic, not
the data pipeline): the task's own `step` (forward and loss: `ClassificationTask.step`, `DetectionTask.step`),
backward, AdamW step, zero_grad. Models come from the package's builders: resnet50 at 224 px, batch 128, 1000
classes (`imagerec.models.create_model`), and fcos_lite at 640 px, batch 16, 10 classes, 3 channels
(`create_detector`, as `DetectionTask.build_model` builds it; random images with 1-6 random boxes each; the
detector resizes and pads inside, as in training). Settings, side by side in one process:

- fp32: PyTorch's defaults, so cuDNN convolutions run in TF32 (matmuls stay fp32);
- bf16: `torch.autocast(bfloat16)`, what Lightning's `bf16-mixed` (imagerec's default on a GPU) does;
- bf16 + channels_last: model (and classification batch) in channels_last, as the engine puts convnets on a GPU;
- bf16 + channels_last + compile: `torch.compile` (default mode) of the whole classifier, and of the detector's
  backbone + FPN (the convolutions; FCOS's target matching and losses are data-dependent Python and stay eager).

Each setting has its own copy of the model and optimizer. After warm-up steps (compilation included, its time
reported), the settings take turns for `--rounds` rounds of `--steps` steps each, in an order rotating every round,
so a slow spell hits them alike; every step is timed between two `torch.cuda.synchronize()` calls, and images/s is
the batch over the median step time. Ratios are to fp32 from the same rounds.

Part 2 (inference). A small classification run is trained on the embedded digits (resnet18, 128 px, 1 epoch) and
exported to ONNX with `imagerec.export` (its parity check included). Then images/s of one call on a preprocessed
batch (1 and 32), interleaved rounds, medians: ONNX Runtime on the CPU provider (what imagerec ships), the eager
network on the CPU (fp32, all cores), and on the GPU (fp32, and bf16 autocast).

    python benchmarks/gpu_throughput.py                  # ~3 min on one H200, compilation included
    python benchmarks/gpu_throughput.py --quick          # tiny sizes, a few steps: runs on a CPU too (~2 min)
    python benchmarks/gpu_throughput.py --markdown gpu.md --json gpu.json
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imagerec  # noqa: E402
from _common import markdown_table, print_machine, quiet_console  # noqa: E402
from imagerec.models import create_model  # noqa: E402
from imagerec.models.detection import DetectorSpec, create_detector  # noqa: E402
from imagerec.tasks.classification import ClassificationTask  # noqa: E402
from imagerec.tasks.detection import DetectionTask  # noqa: E402

SETTINGS = ("fp32", "bf16", "bf16+CL", "bf16+CL+compile")


def rate(value: float) -> str:
    """images/s as a table shows it: whole numbers, three significant digits below 100."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_details() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"cuda": torch.version.cuda, "gpus": 0}
    props = torch.cuda.get_device_properties(0)
    return {
        "gpu_name": props.name, "gpus": torch.cuda.device_count(), "gpu_memory_gib": round(props.total_memory / 2**30),
        "sms": props.multi_processor_count, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "bf16": torch.cuda.is_bf16_supported(), "cpu_count": os.cpu_count(),
    }  # fmt: skip


# -- part 1: training steps --------------------------------------------------------------------------------------------
@dataclass
class Workload:
    """One model and one batch: `loss(model, batch)` is the task's step, `compile(model)` what the compile row does."""

    name: str
    model: torch.nn.Module
    batch: Any
    images: int
    loss: Callable[[torch.nn.Module, Any], torch.Tensor]
    compile: Callable[[torch.nn.Module], torch.nn.Module]


def classification(imgsz: int, batch: int, device: torch.device, classes: int = 1000) -> Workload:
    torch.manual_seed(0)
    model = create_model("classify", "resnet50", num_outputs=classes, in_channels=3, imgsz=imgsz)
    task = ClassificationTask([str(i) for i in range(classes)])
    images = torch.randn(batch, 3, imgsz, imgsz, device=device)
    targets = torch.randint(0, classes, (batch,), device=device)
    return Workload(
        f"resnet50 {imgsz} px, batch {batch}", model, (images, targets), batch,
        lambda m, b: task.step(m, b)["loss"], torch.compile,
    )  # fmt: skip


def _boxes(generator: torch.Generator, imgsz: int, classes: int) -> dict[str, torch.Tensor]:
    n = int(torch.randint(1, 7, (), generator=generator))
    xy = torch.rand(n, 2, generator=generator) * imgsz * 0.7
    wh = (0.05 + torch.rand(n, 2, generator=generator) * 0.25) * imgsz
    return {"boxes": torch.cat([xy, xy + wh], dim=1), "labels": torch.randint(0, classes, (n,), generator=generator)}


def _compile_backbone(detector: torch.nn.Module) -> torch.nn.Module:
    detector.model.backbone = torch.compile(detector.model.backbone)
    return detector


def detection(imgsz: int, batch: int, device: torch.device, classes: int = 10) -> Workload:
    torch.manual_seed(0)
    spec = DetectorSpec(num_classes=classes, in_channels=3, imgsz=imgsz, mean=[0.5] * 3, std=[0.25] * 3)
    model = create_detector("fcos_lite", spec)
    task = DetectionTask([str(i) for i in range(classes)])
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, imgsz, imgsz, generator=generator).to(device) for _ in range(batch)]
    targets = [{k: v.to(device) for k, v in _boxes(generator, imgsz, classes).items()} for _ in range(batch)]
    return Workload(
        f"fcos_lite {imgsz} px, batch {batch}", model, (images, targets), batch,
        lambda m, b: task.step(m, b)["loss"], _compile_backbone,
    )  # fmt: skip


@dataclass
class Trainer:
    """One setting: its own model copy and AdamW; `step()` is one timed training step."""

    setting: str
    work: Workload
    device: torch.device
    times: list[float] = field(default_factory=list)
    warmup_s: float = 0.0
    failed: str | None = None

    def __post_init__(self) -> None:
        model = copy.deepcopy(self.work.model).to(self.device).train()
        self.batch = self.work.batch
        if "CL" in self.setting:
            model = model.to(memory_format=torch.channels_last)
            if isinstance(self.batch[0], torch.Tensor):
                self.batch = (self.batch[0].contiguous(memory_format=torch.channels_last), self.batch[1])
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.model = self.work.compile(model) if "compile" in self.setting else model

    def step(self) -> float:
        sync(self.device)
        start = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.setting != "fp32"):
            loss = self.work.loss(self.model, self.batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sync(self.device)
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"{self.setting}: loss is {loss.item()}")
        return time.perf_counter() - start

    def warm_up(self, steps: int) -> None:
        start = time.perf_counter()
        try:
            for _ in range(steps):
                self.step()
        except Exception as error:  # Inductor's failures (no compiler, an unsupported op) have many types
            lines = str(error).strip().splitlines()
            self.failed = f"{type(error).__name__}: {lines[0][:160] if lines else ''}"
        self.warmup_s = time.perf_counter() - start

    @property
    def images_per_s(self) -> float:
        return self.work.images / statistics.median(self.times) if self.times else float("nan")


def measure_training(work: Workload, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    settings = [s for s in SETTINGS if args.compile or "compile" not in s]
    trainers = [Trainer(s, work, device) for s in settings]
    for trainer in trainers:
        trainer.warm_up(args.warmup)
    running = [t for t in trainers if t.failed is None]
    for r in range(args.rounds):
        for trainer in running[r % len(running) :] + running[: r % len(running)]:
            trainer.times += [trainer.step() for _ in range(args.steps)]
    base = trainers[0].images_per_s
    rows = {}
    for t in trainers:
        rows[t.setting] = {"images_per_s": t.images_per_s, "vs_fp32": t.images_per_s / base, "warmup_s": t.warmup_s,
                           "failed": t.failed}  # fmt: skip
        shown = f"failed: {t.failed}" if t.failed else f"{t.images_per_s:.1f} img/s ({t.images_per_s / base:.2f}×)"
        print(f"  {work.name}: {t.setting}: {shown}, warm-up {t.warmup_s:.1f} s", flush=True)
    if device.type == "cuda":
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB", flush=True)
    del trainers
    return {"workload": work.name, "settings": rows}


def training_table(results: list[dict[str, Any]]) -> str:
    settings = [s for s in SETTINGS if any(s in r["settings"] for r in results)]
    rows = []
    for r in results:
        cells = []
        for s in settings:
            row = r["settings"].get(s)
            if row is None:
                cells.append("—")
            elif row["failed"]:
                cells.append(f"failed ({row['failed'][:60]})")
            else:
                cells.append(f"{rate(row['images_per_s'])} ({row['vs_fp32']:.2f}×)")
        compile_s = r["settings"].get("bf16+CL+compile", {}).get("warmup_s")
        rows.append((r["workload"], *cells, "—" if compile_s is None else f"{compile_s:.0f}"))
    header = ("training step", *(f"{s} img/s (× fp32)" for s in settings), "compile warm-up s")
    return markdown_table(header, rows)


# -- part 2: exported-runtime inference -------------------------------------------------------------------------------
def trained_run(work: Path, args: argparse.Namespace) -> imagerec.Run:
    digits = imagerec.write_sample("digits", work / "digits")
    return imagerec.train(
        digits, out=work / "run", model=args.infer_model, imgsz=args.infer_imgsz, epochs=1, batch=64, seed=0,
        console=quiet_console(),
    )  # fmt: skip


def timed_call(model: Callable[[Any], Any], x: Any, device: torch.device, bf16: bool) -> float:
    sync(device)
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        model(x)
    sync(device)
    return time.perf_counter() - start


def measure_inference(args: argparse.Namespace, gpu: torch.device | None) -> dict[str, Any]:
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        print("  skipped: onnx / onnxruntime not installed (pip install 'imagerec[onnx]')")
        return {"skipped": "onnx extra not installed"}
    with tempfile.TemporaryDirectory(prefix="gpu-throughput-") as tmp:
        run = trained_run(Path(tmp), args)
        exported = imagerec.export(run.path, format="onnx", out=Path(tmp) / "model.onnx", check_images=32, force=True)
        check = exported.parity.to_dict()
        print(f"  {args.infer_model} {args.infer_imgsz} px: trained 1 epoch, test {run.metrics.get('accuracy', 0):.3f};"
              f" ONNX check {json.dumps(check)[:200]}", flush=True)  # fmt: skip
        cpu_predictor = imagerec.load(run.path, device="cpu")
        files = sorted(Path(tmp, "digits").rglob("*.png"))[: max(args.infer_batches)]
        images = torch.stack([cpu_predictor.preprocess(f) for f in files])
        cpu = torch.device("cpu")
        candidates: dict[str, tuple[Callable[[Any], Any], torch.device, bool]] = {
            "onnxruntime CPU": (imagerec.load(exported.path).model, cpu, False),
            "eager CPU fp32": (cpu_predictor.model, cpu, False),
        }
        if gpu is not None:
            model = imagerec.load(run.path, device=str(gpu)).model
            candidates |= {"eager CUDA fp32": (model, gpu, False), "eager CUDA bf16": (model, gpu, True)}
        return {"model": f"{args.infer_model} {args.infer_imgsz} px", "check": check,
                "rows": _time_candidates(candidates, images, args)}  # fmt: skip


def _time_candidates(candidates: dict, images: torch.Tensor, args: argparse.Namespace) -> dict[str, dict[int, float]]:
    """images/s per candidate and batch size: warm-up calls, then interleaved rounds of one call each; medians."""
    results: dict[str, dict[int, float]] = {name: {} for name in candidates}
    names = list(candidates)
    for size in args.infer_batches:
        inputs = {name: images[:size].to(device) for name, (_, device, _) in candidates.items()}
        times: dict[str, list[float]] = {name: [] for name in names}
        for name, (model, device, bf16) in candidates.items():
            for _ in range(args.warmup):
                timed_call(model, inputs[name], device, bf16)
        for r in range(args.infer_rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                model, device, bf16 = candidates[name]
                times[name].append(timed_call(model, inputs[name], device, bf16))
        for name in names:
            results[name][size] = size / statistics.median(times[name])
            print(f"  batch {size}: {name}: {results[name][size]:.1f} img/s", flush=True)
    return results


def inference_table(result: dict[str, Any]) -> str:
    if "rows" not in result:
        return f"inference: {result.get('skipped')}"
    rows = result["rows"]
    sizes = sorted(next(iter(rows.values())))
    base = rows["onnxruntime CPU"]
    body = [(name, *(f"{rate(v[s])} ({v[s] / base[s]:.2f}×)" for s in sizes)) for name, v in rows.items()]
    header = (f"{result['model']} inference", *(f"batch {s} img/s (× ONNX Runtime CPU)" for s in sizes))
    return markdown_table(header, body)


# -- main --------------------------------------------------------------------------------------------------------------
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and a few steps (runs on a CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="leave out the compile row")
    parser.add_argument("--skip", choices=("training", "inference"), action="append", default=[])
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    args = parser.parse_args(argv)
    full = {"cls": (224, 128), "det": (640, 16), "warmup": 3, "steps": 5, "rounds": 4, "infer_model": "resnet18",
            "infer_imgsz": 128, "infer_batches": (1, 32), "infer_rounds": 20}  # fmt: skip
    quick = {"cls": (32, 4), "det": (128, 2), "warmup": 1, "steps": 2, "rounds": 2, "infer_model": "seed_cnn",
             "infer_imgsz": 16, "infer_batches": (1, 8), "infer_rounds": 5}  # fmt: skip
    for key, value in (quick if args.quick else full).items():
        setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible: run with --device cpu (and --quick) on a machine without one")
    machine = print_machine("GPU throughput: training steps per precision and memory format; exported inference")
    details = gpu_details()
    print("gpu: " + ", ".join(f"{k}={v}" for k, v in details.items()))
    print(f"device={device}, quick={args.quick}, torch.compile={'on' if args.compile else 'off'}\n", flush=True)
    training: list[dict[str, Any]] = []
    inference: dict[str, Any] = {}
    if "training" not in args.skip:
        print("## training throughput", flush=True)
        for build, (imgsz, batch) in ((classification, args.cls), (detection, args.det)):
            training.append(measure_training(build(imgsz, batch, device), device, args))
            write(args, machine, details, training, inference)  # a later stage that times out keeps these rows
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if "inference" not in args.skip:
        print("## exported-runtime inference", flush=True)
        inference = measure_inference(args, device if device.type == "cuda" else None)
    print("\n" + write(args, machine, details, training, inference))


def write(args: argparse.Namespace, machine: dict, details: dict, training: list, inference: dict) -> str:
    """The tables (returned, and written to --markdown) and every number (--json) measured so far."""
    tables = [training_table(training)] if training else []
    tables += [inference_table(inference)] if inference else []
    gpu_name, cuda = details.get("gpu_name", "no GPU"), details.get("cuda")
    text = f"machine: {machine['cpu']} ×{machine['cores']}, {gpu_name}, torch {machine['torch']}, CUDA {cuda}"
    text += "\n\n" + "\n\n".join(tables) + "\n"
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        blob = {"machine": machine, "gpu": details, "quick": args.quick, "training": training, "inference": inference}
        args.json.write_text(json.dumps(blob, indent=1, default=str))
    return text


if __name__ == "__main__":
    main()
