# Stage 1: fetch PASTIS-HD (S2 part) or generate the synthetic dataset, verified.
# The data files are not declared outputs, so a failed or killed download keeps its partial
# files and resumes; the inventory is written only once every file is verified.
# Local data are watched through a fingerprint of their files (sizes and mtimes): a change in
# place changes the `source` param, so Snakemake reruns the download and everything downstream.


def local_source_fingerprint():
    """Fingerprint of the local data (data.source: local); empty for the other sources."""
    if DATA["source"] != "local" or not DATA["root"]:
        return ""
    from gfmtune.data.download.local import source_fingerprint

    return source_fingerprint(Path(DATA["root"]))


rule download:
    output:
        RUN / "raw" / "inventory.json",
    params:
        args=download_args(),
        source=local_source_fingerprint(),
    log:
        RUN / "logs" / "download.log",
    conda:
        CONDA_ENV
    shell:
        "gfmtune download {params.args} --inventory {output} > {log} 2>&1"
