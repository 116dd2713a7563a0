"""Ingest and preprocessing: NIfTI / BraTS / manifest / 2D slice folders -> Zarr store (via Dask),
and the embedded demo cohort builder."""
