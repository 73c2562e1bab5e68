# Stage 3: manifests pinning the training patches (label splits) and frames (timesteps).
from gfmtune.data.manifests import argsort_path

# An argsort variant whose order file was never generated stops the run before any job starts.
if MANIFESTS["label_strategy"] == "paper":
    try:
        argsort_path(MANIFESTS["argsort"])
    except FileNotFoundError as err:
        raise WorkflowError(str(err)) from None


rule label_splits:
    input:
        RUN / "data" / "s2.zarr",
    output:
        splits=[RUN / "manifests" / "label_split" / f"{p}.csv" for p in PERCENTS],
        summary=RUN / "manifests" / "label_split" / "summary.csv",
    params:
        percents=" ".join(PERCENTS),
        strategy=MANIFESTS["label_strategy"],
        seed=MANIFESTS["seed"],
        argsort=MANIFESTS["argsort"],
        out=lambda wildcards, output: Path(output.summary).parent,
    log:
        RUN / "logs" / "label_splits.log",
    conda:
        CONDA_ENV
    shell:
        "gfmtune manifests labels --store {input} --out {params.out} --percents {params.percents}"
        " --strategy {params.strategy} --seed {params.seed} --argsort {params.argsort}"
        " > {log} 2>&1"


rule timestep_manifest:
    input:
        RUN / "data" / "s2.zarr",
    output:
        RUN / "manifests" / "timesteps" / "{t}.csv",
    params:
        strategy=MANIFESTS["timestep_strategy"],
        seed=MANIFESTS["seed"],
        out=lambda wildcards, output: Path(output[0]).parent,
    log:
        RUN / "logs" / "timesteps_{t}.log",
    conda:
        CONDA_ENV
    shell:
        "gfmtune manifests timesteps --store {input} --out {params.out} --timesteps {wildcards.t}"
        " --strategy {params.strategy} --seed {params.seed} > {log} 2>&1"
