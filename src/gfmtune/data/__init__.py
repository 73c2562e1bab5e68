"""Data stages: download, synthetic PASTIS, Zarr store, manifests, training dataset."""
