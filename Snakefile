# gfmtune: fine-tuning geospatial foundation models for crop-type mapping (PASTIS-HD).
# Stages: download -> store (Zarr) -> manifests -> train (one job per cell) -> results (tables,
# figures, claims), training_curves and predict_maps; beside them weights (pretrained
# checkpoints), params (parameter tables) and run_config (the resolved configuration).
# Rule files under rules/ are named after their stage; their functions are in rules/helpers/,
# shared ones in rules/common.smk.
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


configfile: Path(workflow.basedir) / "workflow_config.yaml"


report: "rules/captions/workflow.rst"


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/weights.smk"
include: "rules/store.smk"
include: "rules/manifests.smk"
include: "rules/train.smk"
include: "rules/results.smk"
include: "rules/maps.smk"
include: "rules/training_curves.smk"
include: "rules/run_config.smk"


# Downloads run where Snakemake runs (the submitting host under SLURM), since compute nodes
# often have no internet, and so does writing the resolved configuration; the rest goes to the
# cluster.
localrules:
    download,
    weights,
    run_config,


rule all:
    input:
        all_targets(),
    default_target: True
