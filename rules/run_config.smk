# The run's resolved configuration (preset, overlays, --config values, schema defaults), written
# where Snakemake runs; the HTML report shows it.
import yaml


rule run_config:
    output:
        report(
            RUN / "config.yaml",
            caption="captions/config.rst",
            category="Configuration",
            labels=report_labels("config.yaml: the configuration as the workflow resolved it"),
        ),
    params:
        # the whole resolved configuration as a parameter: any change rewrites the file
        text=yaml.safe_dump(config, sort_keys=False, default_flow_style=None),
    log:
        RUN / "logs" / "run_config.log",
    run:
        from gfmtune.fileio import atomic_write_text

        atomic_write_text(Path(output[0]), params.text)
        Path(log[0]).write_text(f"wrote the resolved configuration to {output[0]}\n")
