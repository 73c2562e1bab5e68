# Stage 3: manifests pinning the training patches (label splits) and frames (timesteps).
from gfmtune.data.manifests import argsort_path

# An argsort variant whose order file was never generated stops the run before any job starts.
for _split in ["main", *VARIANTS]:
    if split_option(_split, "label_strategy") == "paper":
        try:
            argsort_path(split_option(_split, "argsort"))
        except FileNotFoundError as err:
            raise WorkflowError(f"split {_split}: {err}") from None


rule label_splits:
    input:
        RUN / "data" / "s2.zarr",
    output:
        splits=[RUN / "manifests" / "label_split" / f"{p}.csv" for p in PERCENTS],
        summary=report(
            RUN / "manifests" / "label_split" / "summary.csv",
            caption="captions/label_split.rst",
            category="Data",
            labels=report_labels("summary.csv: each label split's patches and classes"),
        ),
    params:
        percents=PERCENTS,
        strategy=MANIFESTS["label_strategy"],
        seed=MANIFESTS["seed"],
        argsort=MANIFESTS["argsort"],
        out=lambda wildcards, output: Path(output.summary).parent,
    resources:
        disk_mb=megabytes(DISK.manifests),  # every manifest of the run: KB
    log:
        RUN / "logs" / "label_splits.log",
    conda:
        CONDA_ENV
    shell:
        "gfmtune manifests labels --store {input:q} --out {params.out:q}"
        " --percents {params.percents:q}"
        " --strategy {params.strategy:q} --seed {params.seed:q} --argsort {params.argsort:q}"
        " > {log:q} 2>&1"


# A label-split variant (manifests.split_variants): its own manifests at VARIANT_PERCENTS.
use rule label_splits as label_split_variant with:
    output:
        splits=[split_dir("{split}") / f"{p}.csv" for p in VARIANT_PERCENTS],
        summary=split_dir("{split}") / "summary.csv",
    params:
        percents=VARIANT_PERCENTS,
        strategy=lambda wildcards: split_option(wildcards.split, "label_strategy"),
        seed=lambda wildcards: split_option(wildcards.split, "seed"),
        argsort=lambda wildcards: split_option(wildcards.split, "argsort"),
        out=lambda wildcards, output: Path(output.summary).parent,
    log:
        RUN / "logs" / "label_splits~{split}.log",


rule timestep_manifest:
    input:
        RUN / "data" / "s2.zarr",
    output:
        RUN / "manifests" / "timesteps" / "{t}.csv",
    params:
        strategy=MANIFESTS["timestep_strategy"],
        seed=MANIFESTS["seed"],
        out=lambda wildcards, output: Path(output[0]).parent,
    resources:
        disk_mb=megabytes(DISK.manifests),
    log:
        RUN / "logs" / "timesteps_{t}.log",
    conda:
        CONDA_ENV
    shell:
        "gfmtune manifests timesteps --store {input:q} --out {params.out:q}"
        " --timesteps {wildcards.t:q}"
        " --strategy {params.strategy:q} --seed {params.seed:q} > {log:q} 2>&1"
