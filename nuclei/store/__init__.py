"""The Zarr store: its layout, entry records, the writer and the query API."""
