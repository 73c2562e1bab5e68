#!/usr/bin/env bash
# Snakemake runs this in the new env of gfmtune.yaml: this project, editable, from the
# workflow's folder. Its dependencies and build backend came from the lock.
set -euo pipefail
python -m pip install --no-deps --no-build-isolation \
    -e "${GFMTUNE_WORKFLOW:?rules/common.smk exports it}"
