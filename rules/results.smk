# Stage 5: the paper's tables, figures and the claims check from every finished cell, and the
# parameter table of the paper-size models.


rule results:
    input:
        cells=cell_metrics(),
    output:
        table=RUN / "tables" / "miou.csv",
        comparison=RUN / "tables" / "comparison.csv",
        cost=RUN / "tables" / "cost.csv",
        curves=RUN / "figures" / "miou_vs_frames.png",
        claims=RUN / "claims.md",
    params:
        out=RUN,
    log:
        RUN / "logs" / "results.log",
    conda:
        CONDA_ENV
    shell:
        "gfmtune results --cells {input.cells} --out {params.out} > {log} 2>&1"


rule params:
    output:
        RUN / "tables" / "params.csv",
    log:
        RUN / "logs" / "params.log",
    conda:
        CONDA_ENV
    shell:
        "gfmtune params --out {output} > {log} 2>&1"
