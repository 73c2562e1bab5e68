# Stage 4: one training job per grid cell (model, FT-Rate, label fraction, frames, seed).
# The cell folder keeps its resumable state when a job is killed; metrics.json, the only
# declared output, is written last.

include: "helpers/train.smk"


# CPUs of a training job (train_threads, rules/helpers/train.smk): its workers and one more;
# under profiles/slurm its set-threads, which is also the CPUs SLURM allocates (cpus_per_task).


rule train:
    input:
        store=RUN / "data" / "s2.zarr",
        split=RUN / "manifests" / "label_split" / "{label_percent}.csv",
        timesteps=RUN / "manifests" / "timesteps" / "{timesteps}.csv",
        weights=weights_stamp,
    output:
        RUN / "cells" / CELLS.wildcard_pattern / "metrics.json",
    params:
        split=lambda wildcards: wildcards.get("split", "main"),
        settings=json.dumps(config["train"]["settings"]),
        weights=weights_args,
        device=config["train"]["device"],
        cache=RUN / "feature_cache",
        out=lambda wildcards, output: Path(output[0]).parent,
    threads: train_threads()
    resources:
        gpu=config["train"]["gpus"],
        mem_mb=config["train"]["mem_mb"],
        runtime=train_runtime,
        disk_mb=train_disk_mb,  # best.pt, state.pt and a feature cache it may build
        attempt=lambda wildcards, attempt: attempt,  # for --attempt (no retry of a repeat)
    log:
        RUN / "logs" / "train" / f"{CELLS.wildcard_pattern}.log",
    benchmark:
        RUN / "benchmarks" / "train" / f"{CELLS.wildcard_pattern}.tsv"
    conda:
        CONDA_ENV
    shell:
        # Under SLURM the log's first line names the job and the GPU SLURM gave it.
        '{{ if [ -n "${{SLURM_JOB_ID:-}}" ]; then echo "slurm job $SLURM_JOB_ID'
        ' CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-unset}}"; fi;'
        " gfmtune train --store {input.store:q} --label-split {input.split:q}"
        " --timesteps {input.timesteps:q} --model {wildcards.model:q}"
        " --ft-rate {wildcards.ft_rate:q} --seed {wildcards.seed:q} --split-name {params.split:q}"
        " --settings-json {params.settings:q} {params.weights:q}"
        " --device {params.device:q} --feature-cache {params.cache:q} --out {params.out:q}"
        " --threads {threads:q} --attempt {resources.attempt:q}"
        " --no-progress; }} > {log:q} 2>&1"


# The grid's cells again on a label-split variant (manifests.split_variants, at VARIANT_PERCENTS).
use rule train as train_variant with:
    input:
        store=RUN / "data" / "s2.zarr",
        split=split_dir("{split}") / "{label_percent}.csv",
        timesteps=RUN / "manifests" / "timesteps" / "{timesteps}.csv",
        weights=weights_stamp,
    output:
        RUN / "cells" / "split~{split}" / CELLS.wildcard_pattern / "metrics.json",
    log:
        RUN / "logs" / "train" / "split~{split}" / f"{CELLS.wildcard_pattern}.log",
    benchmark:
        RUN / "benchmarks" / "train" / "split~{split}" / f"{CELLS.wildcard_pattern}.tsv"
