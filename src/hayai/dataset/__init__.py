"""Training datasets: reading a folder of images and captions, the dataset doctor, preparation, and rendering
one with a model.

    from hayai.dataset import scan_dataset, check_dataset, prepare_dataset, read_prompts, render_dataset
    scan = scan_dataset("my_pictures")              # images, captions, kohya N_name folders; nothing written
    report = check_dataset(scan, resolution=512)   # counts, sizes, duplicates, tags, findings (pure)
    manifest = prepare_dataset(scan, "prepared", resolution=512)   # buckets, split, manifest.json
    result = render_dataset(Engine(), read_prompts("prompts.txt"), "its-own", per_prompt=4)  # NNNNN.png + .txt
"""

from __future__ import annotations

from hayai.dataset.check import DatasetReport, Finding, check_dataset
from hayai.dataset.prepare import Manifest, ManifestItem, load_manifest, prepare_dataset
from hayai.dataset.render import RenderResult, read_prompts, render_dataset
from hayai.dataset.scan import DatasetScan, ImageRecord, scan_dataset

__all__ = [
    "DatasetReport",
    "DatasetScan",
    "Finding",
    "ImageRecord",
    "Manifest",
    "ManifestItem",
    "RenderResult",
    "check_dataset",
    "load_manifest",
    "prepare_dataset",
    "read_prompts",
    "render_dataset",
    "scan_dataset",
]
