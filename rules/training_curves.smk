# Stage 5: every cell's training loss and validation mIoU per epoch, in one figure.


rule training_curves:
    input:
        cells=cell_metrics(),
    output:
        report(
            RUN / "figures" / "training_curves.png",
            caption="captions/training_curves.rst",
            category="Training",
            labels=report_labels("training_curves.png: loss and validation mIoU per epoch"),
        ),
        RUN / "figures" / "training_curves.pdf",
    params:
        base=RUN / "figures" / "training_curves",
        synthetic=["--synthetic-data"] if DATA["source"] == "synthetic" else [],
    log:
        RUN / "logs" / "training_curves.log",
    conda:
        CONDA_ENV
    shell:
        "gfmtune training-curves --cells {input.cells:q} --out {params.base:q} {params.synthetic:q}"
        " > {log:q} 2>&1"
