"""A data format as the rest of imagerec sees it: one entry that recognises the format on disk, reads it into a
DataIndex and, for detection formats, writes one. Each format module defines its entry (`FORMAT`);
`imagerec.data.formats` registers them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from imagerec.data.formats._boxes import Findings
from imagerec.data.index import DataIndex
from imagerec.data.targets import Sample

Reader = Callable[[Path, Findings], DataIndex]


class Place(Protocol):
    """Links or copies a sample's image into `folder` under a name no other image there has (`by_stem`: no other
    stem either, for formats whose label files are named after the image) and returns that name."""

    def __call__(self, sample: Sample, folder: Path, *, by_stem: bool = False) -> str: ...


@dataclass
class Written:
    """What a writer wrote: boxes, and what its format cannot hold → how many were left out."""

    boxes: int = 0
    left_out: dict[str, int] = field(default_factory=dict)

    def leave_out(self, what: str, n: int = 1) -> None:
        """Count `n` more of `what` left out (nothing is recorded for none)."""
        if n:
            self.left_out[what] = self.left_out.get(what, 0) + n


Writer = Callable[[DataIndex, Path, Place], Written]


@dataclass(frozen=True)
class DataFormat:
    """How one format is recognised, read and written.

    `detect(folder)` judges from names and layout without reading every file; detection asks the formats in
    ascending `priority` and takes the first that accepts, while a single file goes by its suffix (`suffixes`).
    `variant(path)` names the registered format the data really is, for a name that covers several (`csv`: class
    labels, or boxes when the table has box columns). `write(index, root, place)` writes detection data into the
    new folder `root`, placing images with `place`.
    """

    name: str
    read: Reader
    detect: Callable[[Path], bool] | None = None
    priority: int = 0
    suffixes: tuple[str, ...] = ()
    variant: Callable[[Path], str] | None = None
    write: Writer | None = None
    detection: bool = False  # its DataIndex.format means detection data (DETECTION_FORMATS)
    forceable: bool = True  # a name users may give as the format (FORMATS); otherwise reached through a variant
