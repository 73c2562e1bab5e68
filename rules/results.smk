# Stage 5: the paper's tables, figures and the claims check from every finished cell, and the
# parameter table of the paper-size models.


rule results:
    input:
        cells=cell_metrics(),
    output:
        table=report(RUN / "tables" / "miou.csv", caption="report/table.rst", category="Tables"),
        comparison=report(
            RUN / "tables" / "comparison.csv",
            caption="report/comparison.rst",
            category="Tables",
        ),
        cost=RUN / "tables" / "cost.csv",
        spread=report(
            RUN / "tables" / "split_spread.csv",
            caption="report/split_spread.rst",
            category="Tables",
        ),
        curves=report(
            RUN / "figures" / "miou_vs_frames.png",
            caption="report/miou_vs_frames.rst",
            category="Figures",
        ),
        heatmaps=report(
            RUN / "figures" / "heatmaps.png", caption="report/heatmaps.rst", category="Figures"
        ),
        claims=report(RUN / "claims.md", caption="report/claims.rst", category="Claims"),
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
        report(RUN / "tables" / "params.csv", caption="report/params.rst", category="Tables"),
    log:
        RUN / "logs" / "params.log",
    conda:
        CONDA_ENV
    shell:
        "gfmtune params --out {output} > {log} 2>&1"
