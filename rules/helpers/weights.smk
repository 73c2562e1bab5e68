# Functions of rules/weights.smk (Snakemake's lint wants rule files without functions).


def weights_disk_mb(wildcards):
    """disk_mb of a checkpoint's download: its file's size in the catalog."""
    return megabytes(CHECKPOINTS[wildcards.ckpt].size)


# With weights.offline, the checkpoints must already be there: checked at parse time (so also by
# `snakemake -n`) by size only; the sha256 is checked by the rule when it runs.
def offline_weights_problems(folder):
    """One line per checkpoint the models need that is missing from ``folder`` or has the wrong
    size (path, expected size, found), empty when all are there."""
    problems = []
    for name in checkpoints():
        ckpt = CHECKPOINTS[name]
        path = Path(folder) / ckpt.filename
        found = f"{path.stat().st_size:,} bytes" if path.is_file() else "none"
        if found != f"{ckpt.size:,} bytes":
            problems.append(f"  {path}: expected {ckpt.size:,} bytes, found {found}")
    return problems


def check_offline_weights(folder):
    """Stop the workflow with one error naming every missing or wrong-size checkpoint and the
    prefetch command."""
    problems = offline_weights_problems(folder)
    if problems:
        raise WorkflowError(
            f"weights.offline is true but {len(problems)} checkpoint(s) in {folder} are missing "
            "or of the wrong size:\n" + "\n".join(problems) + "\nFetch each on a machine with "
            "internet (gfmtune weights --checkpoint NAME --dir DIR --stamp NAME.json, NAME one of "
            f"{', '.join(checkpoints())}) and copy it into {folder}; its sha256 is verified when "
            "the weights rule runs."
        )


if config["weights"]["offline"]:
    check_offline_weights(config["weights"]["dir"])
