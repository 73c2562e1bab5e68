# Functions of rules/maps.smk (Snakemake's lint wants rule files without functions).


def maps_cells(wildcards):
    """The cells' metrics for predict_maps, or the reason maps cannot be made."""
    if not MAPS:
        raise WorkflowError(
            "predict_maps needs each cell's best.pt, but train.settings.keep_checkpoint is none; "
            "set it to best to make prediction maps"
        )
    return cell_metrics()
