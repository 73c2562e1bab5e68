# Stage 2: one chunked, sharded, compressed Zarr store of the S2 series and labels.
# Built in s2.zarr.partial and renamed when complete; a killed conversion resumes.


rule store:
    input:
        RUN / "raw" / "inventory.json",
    output:
        directory(RUN / "data" / "s2.zarr"),
    threads: config["store"]["threads"]
    resources:
        disk_mb=megabytes(DISK.store),  # the raw data x ESTIMATED_RATIO, as its space check
    log:
        RUN / "logs" / "store.log",
    conda:
        CONDA_ENV
    shell:
        "gfmtune store --inventory {input:q} --out {output:q} --threads {threads:q}"
        " > {log:q} 2>&1"
