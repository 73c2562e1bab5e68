"""All measurement, none of it part of the workflow: the Zarr reader (``gfmtune bench-data``,
:mod:`.reader`), the training path (``gfmtune bench-train``: :mod:`.train` over the compute
timing of :mod:`.measure` and the loader timing of :mod:`.data_path`, projected on the grid by
:mod:`.grid`), the validation switches (``gfmtune bench-validation``) and the GPU check
(``gfmtune gpu-check``, ``gfmtune gpu-wheels``)."""
