# Pretrained checkpoints: fetched once into weights.dir (resumable, verified against the
# published sha256 and size); the per-run stamp is written only after verification. With
# weights.offline they must be there already (checked at parse time: helpers/weights.smk).


include: "helpers/weights.smk"


rule weights:
    output:
        RUN / "weights" / "{ckpt}.json",
    params:
        folder=config["weights"]["dir"],
        retries=config["weights"]["retries"],
        offline=["--offline"] if config["weights"]["offline"] else [],
    resources:
        disk_mb=weights_disk_mb,
    log:
        RUN / "logs" / "weights_{ckpt}.log",
    conda:
        CONDA_ENV
    shell:
        "gfmtune weights --checkpoint {wildcards.ckpt:q} --dir {params.folder:q}"
        " --retries {params.retries:q} {params.offline:q} --stamp {output:q} > {log:q} 2>&1"
