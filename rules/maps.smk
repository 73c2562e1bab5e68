# Stage 5: GeoTIFF prediction maps of the test fold from each model family's best cell (by the
# paper's mIoU in tables/miou.csv), the labels on the same grid, and a figure of a few patches.
# Not part of the run with keep_checkpoint none (MAPS): asked for by name, it stops at once.


include: "helpers/maps.smk"


rule predict_maps:
    input:
        table=RUN / "tables" / "miou.csv",
        cells=maps_cells,
        store=RUN / "data" / "s2.zarr",
        timesteps=[RUN / "manifests" / "timesteps" / f"{t}.csv" for t in TIMESTEPS],
    output:
        maps=directory(RUN / "maps"),
        figure=report(
            RUN / "figures" / "predictions.png",
            caption="captions/predictions.rst",
            category="Maps",
            labels=report_labels("predictions.png: test patches and each family's prediction"),
        ),
    params:
        run=RUN,
        weights=config["weights"]["dir"],
        device=config["train"]["device"],
    threads: 2
    resources:
        gpu=config["train"]["gpus"],
    log:
        RUN / "logs" / "predict_maps.log",
    conda:
        CONDA_ENV
    shell:
        "gfmtune predict-maps --run {params.run:q} --weights-dir {params.weights:q}"
        " --device {params.device:q} --threads {threads:q} --no-progress > {log:q} 2>&1"
