"""gfmtune: fine-tuning geospatial foundation models for crop-type mapping (PASTIS-HD)."""
