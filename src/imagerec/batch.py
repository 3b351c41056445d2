"""Batch prediction on a Ray cluster: `predict_dataset` for a Ray dataset of images, and `predict_files`, what
`imagerec predict --engine ray` runs. Needs the optional extra: `pip install 'imagerec[ray]'`.

    import ray
    from imagerec.batch import predict_dataset

    images = ray.data.read_binary_files("s3://bucket/scans/", include_paths=True)
    predict_dataset(images, "runs/scans", actors=4).write_parquet("s3://bucket/predictions/")

Importing this module does not import Ray; calling either function without Ray installed is one error naming the
command to install it.
"""

from __future__ import annotations

from imagerec.outputs.batch import predict_dataset, predict_files

__all__ = ["predict_dataset", "predict_files"]
