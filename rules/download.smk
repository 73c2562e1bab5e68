# Stage 1: fetch PASTIS-HD (S2 part) or generate the synthetic dataset, verified.
# The data files are not declared outputs, so a failed or killed download keeps its partial
# files and resumes; the inventory is written only once every file is verified.


rule download:
    output:
        RUN / "raw" / "inventory.json",
    params:
        args=download_args(),
    log:
        RUN / "logs" / "download.log",
    conda:
        CONDA_ENV
    shell:
        "gfmtune download {params.args} --inventory {output} > {log} 2>&1"
