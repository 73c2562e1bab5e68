# The report's own pieces: the run's resolved configuration and the training curves of its cells.
import yaml


rule run_config:
    output:
        report(RUN / "config.yaml", caption="report/config.rst", category="Configuration"),
    params:
        # the whole resolved configuration as a parameter: any change rewrites the file
        text=yaml.safe_dump(config, sort_keys=False, default_flow_style=None),
    log:
        RUN / "logs" / "run_config.log",
    run:
        from gfmtune.fileio import atomic_write_text

        atomic_write_text(Path(output[0]), params.text)
        Path(log[0]).write_text(f"wrote the resolved configuration to {output[0]}\n")


rule training_curves:
    input:
        cells=cell_metrics(),
    output:
        report(
            RUN / "figures" / "training_curves.png",
            caption="report/training_curves.rst",
            category="Training",
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
