# Functions of rules/download.smk (Snakemake's lint wants rule files without functions).


def download_dir():
    return DATA["download_dir"] or str(RUN / "raw" / "pastis")


def download_args():
    """Arguments of `gfmtune download` for the configured source, one list item per argument
    (quoted one by one in the shell command: a value never becomes shell code)."""
    source = DATA["source"]
    args = ["--source", source, "--dest", download_dir()]
    if source == "local":
        if not DATA["root"]:
            raise WorkflowError("data.source is 'local' but data.root is not set in the config")
        args += ["--root", DATA["root"]]
    elif source == "huggingface":
        hf = DATA["huggingface"]
        args += ["--repo-id", hf["repo_id"], "--lock-file", hf["lock_file"]]
        args += ["--revision", hf["revision"]] if hf["revision"] else []
        args += ["--hf-endpoint", hf["endpoint"]] if hf["endpoint"] else []
    elif source == "zenodo":
        zen = DATA["zenodo"]
        args += ["--record", str(zen["record"]), "--zenodo-api", zen["api"]]
        args += ["--files", *zen["files"]] if zen["files"] else []
    else:
        syn = DATA["synthetic"]
        args += ["--patches", str(syn["patches"]), "--size", str(syn["size"]), "--frames"]
        args += [str(f) for f in syn["frames_per_tile"]]
        args += ["--seed", str(syn["seed"])]
    if source in ("huggingface", "zenodo"):
        args += ["--workers", str(DATA["workers"]), "--retries", str(DATA["retries"])]
    return args
