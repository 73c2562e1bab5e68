# Stage 5: the paper's tables, figures and the claims check from every finished cell (95 %
# bootstrap intervals from each cell's test_patches.npz), the FT-Rate picked on validation, the
# cost figure (trainable parameters from the params rule's table), and the parameter table of
# the paper-size models.
from gfmtune.results.tables import fraction_groups

#: Where the report shows them: the Results section's tables and figures.
RESULTS_TABLE = {"category": "Results", "subcategory": "Tables"}
RESULTS_FIGURE = {"category": "Results", "subcategory": "Figures"}
#: The paper-layout tables' names: two label fractions each, most labels first ("100_50").
LAYOUTS = ["_".join(f"{p:g}" for p in group) for group in fraction_groups(map(float, PERCENTS))]


rule results:
    input:
        cells=cell_metrics(),
        params=RUN / "tables" / "params.csv",
    output:
        table=report(RUN / "tables" / "miou.csv", caption="captions/table.rst", **RESULTS_TABLE),
        comparison=report(
            RUN / "tables" / "comparison.csv",
            caption="captions/comparison.rst",
            **RESULTS_TABLE,
        ),
        layouts=[
            report(
                RUN / "tables" / f"miou_{name}.csv", caption="captions/layout.rst", **RESULTS_TABLE
            )
            for name in LAYOUTS
        ],
        cost=report(RUN / "tables" / "cost.csv", caption="captions/cost.rst", category="Cost"),
        tuned=report(
            RUN / "tables" / "ft_tuned.csv", caption="captions/ft_tuned.rst", **RESULTS_TABLE
        ),
        spread=report(
            RUN / "tables" / "split_spread.csv",
            caption="captions/split_spread.rst",
            **RESULTS_TABLE,
        ),
        curves=report(
            RUN / "figures" / "miou_vs_frames.png",
            caption="captions/miou_vs_frames.rst",
            **RESULTS_FIGURE,
        ),
        heatmaps=report(
            RUN / "figures" / "heatmaps.png", caption="captions/heatmaps.rst", **RESULTS_FIGURE
        ),
        claims=report(
            RUN / "claims.md",
            caption="captions/claims.rst",
            category="Results",
            subcategory="Claims",
        ),
        ftrate=report(
            RUN / "figures" / "miou_vs_ftrate.png",
            caption="captions/miou_vs_ftrate.rst",
            **RESULTS_FIGURE,
        ),
        pareto=report(
            RUN / "figures" / "cost_pareto.png",
            caption="captions/cost_pareto.rst",
            category="Cost",
        ),
    params:
        out=RUN,
        resamples=config["results"]["bootstrap"]["resamples"],
        seed=config["results"]["bootstrap"]["seed"],
        synthetic=["--synthetic-data"] if DATA["source"] == "synthetic" else [],
    log:
        RUN / "logs" / "results.log",
    conda:
        CONDA_ENV
    shell:
        "gfmtune results --cells {input.cells:q} --params {input.params:q} --out {params.out:q} "
        "--resamples {params.resamples:q} --bootstrap-seed {params.seed:q} {params.synthetic:q}"
        " > {log:q} 2>&1"


rule params:
    output:
        run=report(RUN / "tables" / "params.csv", caption="captions/params.rst", category="Cost"),
        paper=report(
            RUN / "tables" / "params_paper.csv",
            caption="captions/params_paper.rst",
            category="Cost",
        ),
    params:
        models=config["models"],
    log:
        RUN / "logs" / "params.log",
    conda:
        CONDA_ENV
    shell:
        "{{ gfmtune params --models {params.models:q} --out {output.run:q}"
        " && gfmtune params --out {output.paper:q}; }} > {log:q} 2>&1"
