# Stage 1: fetch PASTIS-HD (S2 part) or generate the synthetic dataset, verified.
# The data files are not declared outputs, so a failed or killed download keeps its partial
# files and resumes; the inventory is written only once every file is verified.
# Local data are watched through a fingerprint of their files (sizes and mtimes): a change in
# place changes the `source` param, so Snakemake reruns the download and everything downstream.
include: "helpers/download.smk"

from gfmtune.data.download.local import source_fingerprint, source_problem

# Local data that cannot be PASTIS stop `snakemake -n`, before any job (unless downloaded
# already: then the changed fingerprint reruns the download, which reports the problem).
if DATA["source"] == "local" and DATA["root"] and not (RUN / "raw" / "inventory.json").exists():
    if (problem := source_problem(DATA["root"])) is not None:
        raise WorkflowError(f"data.root: {problem}")


rule download:
    output:
        RUN / "raw" / "inventory.json",
    params:
        args=download_args(),
        source=(
            source_fingerprint(DATA["root"])
            if DATA["source"] == "local" and DATA["root"]
            else ""
        ),
    resources:
        disk_mb=megabytes(DISK.download),  # the raw data, as gfmtune plan estimates them
    log:
        RUN / "logs" / "download.log",
    conda:
        CONDA_ENV
    shell:
        "gfmtune download {params.args:q} --inventory {output:q} > {log:q} 2>&1"
