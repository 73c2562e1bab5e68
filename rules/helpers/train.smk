# Functions of rules/train.smk (Snakemake's lint wants rule files without functions).
from gfmtune.train.loader import MAX_AUTO_WORKERS


def weights_stamp(wildcards):
    ckpt = facts(wildcards.model).checkpoint
    return [RUN / "weights" / f"{ckpt.name}.json"] if ckpt else []


def weights_args(wildcards):
    """``--weights-dir DIR`` for a model with a pretrained checkpoint, as separate arguments."""
    return ["--weights-dir", config["weights"]["dir"]] if weights_stamp(wildcards) else []


def train_threads():
    """CPUs of a training job: with workers auto, the cores Snakemake may use (--cores) shared
    by the training jobs that run at once (--resources gpu=N: cores // N), at most the 15 workers
    of gfmtune.train.loader.MAX_AUTO_WORKERS and the main process; with a number of workers,
    that number and one. A cluster run without --cores (no total to share) gets the 16 of auto;
    SLURM's profile sets its own (set-threads, and cores to the same number, so that a dry run
    shows the --threads the job will get)."""
    workers = config["train"]["settings"].get("workers", "auto")
    if workers != "auto":
        return int(workers) + 1
    cores = workflow.resource_settings.cores
    if cores is None:
        return MAX_AUTO_WORKERS + 1
    gpus = workflow.global_resources.get("gpu")
    share = cores // max(1, int(getattr(gpus, "value", gpus) or 1))
    return max(1, min(MAX_AUTO_WORKERS + 1, share))


def train_disk_mb(wildcards):
    """disk_mb of a training job: its best.pt, its state.pt and the feature cache it may build,
    as gfmtune plan estimates them (DISK, rules/common.smk); FLOOR_MB for a job whose FLOP row
    the shipped table lacks (gfmtune plan counts it, which takes seconds)."""
    cell = Cell(**{field: getattr(wildcards, field) for field in Cell._fields})
    written = DISK.train.get((wildcards.get("split", "main"), cell))
    return FLOOR_MB if written is None else megabytes(written)


def train_runtime(wildcards, attempt):
    """Time limit in minutes of a training job (SLURM -t): `train.runtime` is a CROMA cell's
    at 35 frames. Scaled by the model (its catalog runtime, relative to CROMA's: the step costs
    behind the GPU-time estimate in docs/reproduce.md, with margin), by the frames
    (0.2 + 0.8 t / 35: a fifth does not grow with t) and by the attempt (a retry after a
    time-out gets twice the limit, and resumes from its last finished epoch)."""
    import math

    model = facts(wildcards.model).runtime
    frames = 0.2 + 0.8 * int(wildcards.timesteps) / 35
    return math.ceil(config["train"]["runtime"] * model * frames * attempt)
