# Stage 5: the paper's tables, figures and the claims check from every finished cell (95 %
# bootstrap intervals from each cell's test_patches.npz), the FT-Rate picked on validation, the
# cost figure (trainable parameters from the params rule's table), and the parameter table of
# the paper-size models.
from gfmtune.results.tables import fraction_groups

#: Where the report shows them: the Results section's tables and figures.
RESULTS_TABLE = {"category": "Results", "subcategory": "Tables"}
RESULTS_FIGURE = {"category": "Results", "subcategory": "Figures"}
RESULTS_CLAIMS = {"category": "Results", "subcategory": "Claims"}
#: The paper-layout tables' names: two label fractions each, most labels first ("100_50"), and
#: the fractions each shows ("100 % and 50 % of the labels").
GROUPS = fraction_groups(map(float, PERCENTS))
LAYOUTS = ["_".join(f"{p:g}" for p in group) for group in GROUPS]
LAYOUT_FRACTIONS = {
    name: " and ".join(f"{p:g} %" for p in group) + " of the labels"
    for name, group in zip(LAYOUTS, GROUPS)
}


rule results:
    input:
        cells=cell_metrics(),
        params=RUN / "tables" / "params.csv",
    output:
        table=report(
            RUN / "tables" / "miou.csv",
            caption="captions/table.rst",
            labels=report_labels("miou.csv: every cell and seed, test and validation mIoU"),
            **RESULTS_TABLE,
        ),
        comparison=report(
            RUN / "tables" / "comparison.csv",
            caption="captions/comparison.rst",
            labels=report_labels("comparison.csv: this run against the published values"),
            **RESULTS_TABLE,
        ),
        layouts=[
            report(
                RUN / "tables" / f"miou_{name}{suffix}",
                caption="captions/layout.rst",
                labels=report_labels(
                    f"miou_{name}{suffix}: the paper's table, {LAYOUT_FRACTIONS[name]}"
                ),
                **RESULTS_TABLE,
            )
            for name in LAYOUTS
            for suffix in (".html", ".csv")
        ],
        cost=report(
            RUN / "tables" / "cost.csv",
            caption="captions/cost.rst",
            category="Cost",
            labels=report_labels("cost.csv: GPU- and CPU-hours per model"),
        ),
        tuned=report(
            RUN / "tables" / "ft_tuned.csv",
            caption="captions/ft_tuned.rst",
            labels=report_labels("ft_tuned.csv: the FT-Rate picked on validation"),
            **RESULTS_TABLE,
        ),
        spread=report(
            RUN / "tables" / "split_spread.csv",
            caption="captions/split_spread.rst",
            labels=report_labels("split_spread.csv: how cells move between splits and seeds"),
            **RESULTS_TABLE,
        ),
        curves=report(
            RUN / "figures" / "miou_vs_frames.png",
            caption="captions/miou_vs_frames.rst",
            labels=report_labels("miou_vs_frames.png: mIoU against frames per series"),
            **RESULTS_FIGURE,
        ),
        heatmaps=report(
            RUN / "figures" / "heatmaps.png",
            caption="captions/heatmaps.rst",
            labels=report_labels("heatmaps.png: GFM mIoU over FT-Rate and frames"),
            **RESULTS_FIGURE,
        ),
        claims=report(
            RUN / "claims.md",
            caption="captions/claims.rst",
            labels=report_labels("claims.md: the paper's claims decided on this run"),
            **RESULTS_CLAIMS,
        ),
        claims_page=report(
            RUN / "claims.html",
            caption="captions/claims.rst",
            labels=report_labels("claims.html: the paper's claims decided on this run"),
            **RESULTS_CLAIMS,
        ),
        ftrate=report(
            RUN / "figures" / "miou_vs_ftrate.png",
            caption="captions/miou_vs_ftrate.rst",
            labels=report_labels("miou_vs_ftrate.png: GFM mIoU against FT-Rate"),
            **RESULTS_FIGURE,
        ),
        pareto=report(
            RUN / "figures" / "cost_pareto.png",
            caption="captions/cost_pareto.rst",
            category="Cost",
            labels=report_labels("cost_pareto.png: mIoU against compute and parameters"),
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
        run=report(
            RUN / "tables" / "params.csv",
            caption="captions/params.rst",
            category="Cost",
            labels=report_labels("params.csv: parameters of this run's models"),
        ),
        paper=report(
            RUN / "tables" / "params_paper.csv",
            caption="captions/params_paper.rst",
            category="Cost",
            labels=report_labels("params_paper.csv: parameters of the paper-size models"),
        ),
    params:
        models=config["models"],
        # the run's decoder temporal module; a linear map's weights count the longest series
        temporal=config["train"]["settings"].get("temporal", "ltae"),
        frames=max(TIMESTEPS),
    log:
        RUN / "logs" / "params.log",
    conda:
        CONDA_ENV
    shell:
        "{{ gfmtune params --models {params.models:q} --temporal {params.temporal:q}"
        " --frames {params.frames:q} --out {output.run:q}"
        " && gfmtune params --out {output.paper:q}; }} > {log:q} 2>&1"
