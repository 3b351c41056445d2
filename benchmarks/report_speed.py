"""Report speed: the time `imagerec report` takes end to end for a classification run with ~1,000 test images.

A seed_cnn (or `--model`) is trained briefly on the 1,797 digits, split so that the test split holds ~1,000 of
them (test 0.556, val 0.1, stratified). Then `write_report` is timed end to end (the Predictor's pass over the
split, whose probabilities also give evaluate's metrics; every figure and gallery; the HTML and the PNGs beside
it): the first call in the process (which also pays for importing matplotlib) and the median of the next
`--repeats`. One more report is taken apart into its phases: loading the run and predicting the split, building
the sections (figures and thumbnails), drawing them to PNG, and writing the files. One torch thread, as the
tests run.

    python benchmarks/report_speed.py            # imgsz 32, 3 repeats, ~1 min on 2 cores
    python benchmarks/report_speed.py --quick    # imgsz 8, 1 repeat, ~20 s
    python benchmarks/report_speed.py --model resnet18 --imgsz 64   # a heavier model: ~2 min
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imagerec  # noqa: E402
from _common import markdown_table, print_machine, quiet_console  # noqa: E402
from imagerec.evaluation import measure  # noqa: E402
from imagerec.outputs.report import build_context, report_sections, write_report  # noqa: E402
from imagerec.outputs.report import html as report_html  # noqa: E402
from imagerec.runs import atomic_write, write_text  # noqa: E402

TEST_FRACTION = 0.556  # of ~180 digits per class: 100 test images per class, 1,000 in all


def seconds_since(start: float) -> float:
    return time.perf_counter() - start


def phases(run: Path, out: Path) -> dict[str, float]:
    """One report, timed phase by phase."""
    times: dict[str, float] = {}
    start = time.perf_counter()
    ctx = build_context(run, out=out, device="cpu")
    times["load the run, predict the split, metrics"] = seconds_since(start)
    start = time.perf_counter()
    sections = report_sections(ctx)
    times["sections (figures, thumbnails)"] = seconds_since(start)
    start = time.perf_counter()
    pictures = report_html.rasterize(sections)
    times["draw PNGs"] = seconds_since(start)
    start = time.perf_counter()
    text = report_html.document(ctx, sections, pictures)
    for picture in pictures.files.values():
        atomic_write(out / picture.name, lambda tmp, data=picture.data: tmp.write_bytes(data))
    write_text(out / "report.html", text)
    times["HTML and files"] = seconds_since(start)
    start = time.perf_counter()
    measure(ctx.predictor.task, ctx.predictor.model, ctx.predictor.info, ctx.index, ctx.split)
    print(f"for comparison, `imagerec evaluate`'s own pass over the split: {seconds_since(start):.2f} s")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="imgsz 8 and one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=32, help="input size of the model (digits are 8×8 scans)")
    parser.add_argument("--model", default="seed_cnn", help="e.g. resnet18: a heavier model, a longer predict pass")
    args = parser.parse_args()
    repeats, imgsz = (1, 8) if args.quick else (args.repeats, args.imgsz)
    torch.set_num_threads(1)
    print_machine("report speed: imagerec report on ~1,000 test images")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        digits = imagerec.write_sample("digits", work / "digits")
        start = time.perf_counter()
        run = imagerec.train(
            digits, out=work / "run", model=args.model, epochs=2, imgsz=imgsz, seed=0, test=TEST_FRACTION,
            val=0.1, precision="32", device="cpu", console=quiet_console(),
        )  # fmt: skip
        print(f"trained {args.model} at imgsz {imgsz} in {seconds_since(start):.1f} s "
              f"(the report at the end of training included); test images: {run.metrics['count']}")  # fmt: skip
        out = work / "report"
        start = time.perf_counter()
        write_report(run.path, out=out, device="cpu")
        first = seconds_since(start)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            path = write_report(run.path, out=out, device="cpu")
            times.append(seconds_since(start))
        size = path.stat().st_size / 1e6
        pngs = len(list(out.glob("*.png")))
        each = ", ".join(f"{t:.2f}" for t in times)
        print(f"write_report end to end: first call {first:.2f} s, then median {statistics.median(times):.2f} s "
              f"of {repeats} ({each}); report.html {size:.1f} MB, {pngs} PNGs")  # fmt: skip
        split = phases(run.path, work / "phases")
        total = sum(split.values())
        rows = [[name, f"{value:.2f}", f"{value / total:.0%}"] for name, value in split.items()]
        print()
        print(markdown_table(["phase", "s", "share"], [*rows, ["total", f"{total:.2f}", "100%"]]))


if __name__ == "__main__":
    main()
