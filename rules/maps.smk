# Stage 5: GeoTIFF prediction maps of the test fold from each model family's best cell (by the
# paper's mIoU in tables/miou.csv), the labels on the same grid, and a figure of a few patches.


rule predict_maps:
    input:
        table=RUN / "tables" / "miou.csv",
        cells=cell_metrics(),
        store=RUN / "data" / "s2.zarr",
        timesteps=[RUN / "manifests" / "timesteps" / f"{t}.csv" for t in TIMESTEPS],
    output:
        maps=directory(RUN / "maps"),
        figure=report(
            RUN / "figures" / "predictions.png",
            caption="report/predictions.rst",
            category="Maps",
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
        "gfmtune predict-maps --run {params.run} --weights-dir {params.weights}"
        " --device {params.device} --threads {threads} --no-progress > {log} 2>&1"
