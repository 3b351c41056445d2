"""Predictions as Arrow tables (what Parquet holds): one row per image, the same columns whether `imagerec predict`
wrote them on this machine or on Ray (`imagerec.batch`).

Each result type's `to_row()` gives the values; the schema here fixes their types, so a shard whose images were all
unreadable (every value None) has the same columns and types as any other, and shards concatenate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from imagerec.tasks.results import Detections, InstanceMasks, Result, SegmentationMask

RLE = pa.struct([("size", pa.list_(pa.int64())), ("counts", pa.string())])  # COCO's compressed run-length mask
_IMAGE = [("source", pa.string()), ("width", pa.int64()), ("height", pa.int64())]


def row_schema(result_type: type[Result]) -> pa.Schema:
    """The columns of `result_type`'s rows (a task's results), in order; `error` is set for an unreadable image."""
    if issubclass(result_type, SegmentationMask):
        fields = [*_IMAGE, ("classes", pa.list_(pa.string())), ("pixels", pa.list_(pa.int64())),
                  ("masks", pa.list_(RLE))]  # fmt: skip
    elif issubclass(result_type, Detections):
        fields = [*_IMAGE, ("labels", pa.list_(pa.string())), ("scores", pa.list_(pa.float64())),
                  ("boxes", pa.list_(pa.list_(pa.float64(), 4)))]  # fmt: skip
        fields += [("masks", pa.list_(RLE))] if issubclass(result_type, InstanceMasks) else []
    else:
        fields = [("source", pa.string()), ("label", pa.string()), ("prob", pa.float64()),
                  ("topk_labels", pa.list_(pa.string())), ("topk_probs", pa.list_(pa.float64()))]  # fmt: skip
    return pa.schema([*fields, ("error", pa.string())])


def to_table(rows: Sequence[dict[str, Any]], result_type: type[Result]) -> pa.Table:
    """`rows` (from results' `to_row()`) as a table of `result_type`'s columns."""
    return pa.Table.from_pylist(list(rows), schema=row_schema(result_type))
