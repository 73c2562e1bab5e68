"""The SLURM profile: its dry run (what each job will be given), and a run on a real one-node
SLURM cluster started by the test (Debian's slurm-wlm; marker ``slurm``).

The dry run is the paper preset's, as docs/slurm.md shows it: every training job's ``--threads``
is the CPUs SLURM allocates it, the local rules carry no SLURM resources and say so, and every
job's disk is a number known at parse time.

The cluster is private to the test: its own slurm.conf (through ``SLURM_CONF``), ports, munge
socket and state folders in a temporary folder, and two scheduling-only GPU slots (character
devices made with ``mknod``, as /dev/null). The node declares 64 CPUs and 128 GB
(``SlurmdParameters=config_overrides``) so that the profile's real requests are scheduled as
they are on a cluster; the jobs still share this machine's cores. Needs root (slurmd runs the
jobs as the submitting user, munged as user munge).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gfmtune.cells import Cell
from gfmtune.models.catalog import CHECKPOINTS
from gfmtune.plan.disk import FLOOR_MB, job_disk, megabytes
from gfmtune.plan.load import load_config
from gfmtune.train.loader import MAX_AUTO_WORKERS
from tests.workflow_helpers import REPO, PlannedJob, planned_jobs, run_snakemake

INSTALL_HINT = "slurm-wlm/munge not installed (install with apt-get install -y slurm-wlm munge)"
DAEMONS = ("slurmctld", "slurmd", "munged")
CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo", "srun", "munge", "unmunge")
MUNGE_KEY = Path("/etc/munge/munge.key")

#: The demo, small: 15 patches of 32 px, CROMA (frozen) and U-TAE at 1 and 6 frames, one epoch.
OVERLAY = {
    "run": "slurm",
    "models": ["croma_tiny", "utae_tiny"],
    "manifests": {"label_percents": [100], "timesteps": [1, 6]},
    "train": {"ft_rates": [0.0], "gpus": 1, "mem_mb": 3000, "runtime": 240,
              "settings": {"epochs": 1, "batch_size": 2, "workers": 0}},
    "data": {"source": "synthetic",
             "synthetic": {"patches": 15, "size": 32, "frames_per_tile": [7, 12]}},
    "store": {"threads": 2},
}  # fmt: skip
#: What each job must have been granted: (CPUs, memory MB, time limit), from profiles/slurm
#: (set-threads, set-resources, default-resources) and, for training, from the overlay's
#: train.mem_mb and train_runtime (rules/helpers/train.smk): 240 x 1 x (0.2 + 0.8 t / 35) min.
GRANTED = {
    "store": (2, 16000, "04:00:00"),
    "label_splits": (1, 4000, "01:00:00"),
    "timestep_manifest": (1, 4000, "01:00:00"),
    "train 1": (16, 3000, "00:54:00"),
    "train 6": (16, 3000, "01:21:00"),
}


#: The profile's environment variables for the dry run (docs/slurm.md).
DRY_RUN_ENV = {"SLURM_PARTITION": "gpu", "SLURM_CPU_PARTITION": "cpu", "SLURM_ACCOUNT": "proj"}
#: What a dry run shows on a job that runs where snakemake runs (profiles/slurm, localrule).
LOCALRULE = "runs where snakemake runs (no sbatch)"


@pytest.fixture(scope="module")
def slurm_dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[PlannedJob]]:
    """``snakemake -n --profile profiles/slurm`` on the paper preset: its output and jobs."""
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[slurm]'")
    workdir = tmp_path_factory.mktemp("slurm-dry-run")
    with pytest.MonkeyPatch.context() as env:
        for name, value in DRY_RUN_ENV.items():
            env.setenv(name, value)
        env.delenv("GFMTUNE_GPU_MODEL", raising=False)
        result = run_snakemake(workdir, "-n", "--profile", str(REPO / "profiles" / "slurm"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output, planned_jobs(output)


def localrules() -> set[str]:
    """The rules the Snakefile's ``localrules:`` names."""
    block = re.search(r"^localrules:\n((?:    \w+,?\n)+)", (REPO / "Snakefile").read_text(), re.M)
    assert block, "no localrules: in the Snakefile"
    return set(re.findall(r"\w+", block.group(1)))


def test_dry_run_shows_the_threads_slurm_allocates(
    slurm_dry_run: tuple[str, list[PlannedJob]],
) -> None:
    """A training job's threads, and the --threads its command gets, are the CPUs SLURM
    allocates it (cpus_per_task): the 16 of workers auto. Every job's command gets the threads
    the dry run prints, and those are the ones the run gives it (store: store.threads), not
    the 1 core a dry run otherwise computes them with."""
    _, jobs = slurm_dry_run
    train = [job for job in jobs if job.rule == "train"]
    assert len(train) == 140
    for job in train:
        assert job.threads == int(job.resources["cpus_per_task"]) == MAX_AUTO_WORKERS + 1, job
    for job in jobs:
        given = re.search(r"--threads (\d+)", job.shell)
        assert given is None or int(given.group(1)) == job.threads, job
    (store,) = [job for job in jobs if job.rule == "store"]
    preset = yaml.safe_load((REPO / "workflow_config.yaml").read_text())
    assert store.threads == preset["store"]["threads"] > 1  # SLURM allocates job.threads
    assert "cpus_per_task" not in store.resources


def test_dry_run_shows_the_local_rules_as_local(
    slurm_dry_run: tuple[str, list[PlannedJob]],
) -> None:
    """download and weights (and run_config, all) run where snakemake runs: no partition,
    account or time limit, and marked so; every other job has the profile's SLURM resources."""
    _, jobs = slurm_dry_run
    local = localrules() | {"all"}  # all: a target only (no command), local by Snakemake's rules
    assert {"download", "weights", "run_config"} <= local
    assert {job.rule for job in jobs if "localrule" in job.resources} == local
    for job in jobs:
        slurm = {"slurm_partition", "slurm_account", "runtime"} & set(job.resources)
        if job.rule in local:
            assert job.resources["localrule"] == LOCALRULE and not slurm, job
        else:
            gpu = job.rule in ("train", "train_variant", "predict_maps")
            assert job.resources["slurm_partition"] == ("gpu" if gpu else "cpu"), job
            assert job.resources["slurm_account"] == "proj" and "runtime" in job.resources, job


def test_dry_run_shows_each_jobs_disk(slurm_dry_run: tuple[str, list[PlannedJob]]) -> None:
    """No <TBD>: a job's disk_mb is known when the workflow is parsed: gfmtune plan's estimate
    (the raw data, a checkpoint, the store, the manifests, a training job's best.pt, state.pt
    and feature cache), else Snakemake's floor."""
    output, jobs = slurm_dry_run
    assert "<TBD>" not in output
    disk = job_disk(load_config(REPO / "workflow_config.yaml"))
    plan = {"download": disk.download, "store": disk.store, "label_splits": disk.manifests,
            "timestep_manifest": disk.manifests}  # fmt: skip
    for job in jobs:
        if job.rule in plan:
            expected = megabytes(plan[job.rule])
        elif job.rule == "weights":
            expected = megabytes(CHECKPOINTS[job.wildcards["ckpt"]].size)
        elif job.rule == "train":
            expected = megabytes(disk.train["main", Cell(**job.wildcards)])
        else:
            expected = FLOOR_MB
        assert int(job.resources["disk_mb"]) == expected, job
    sizes = {int(job.resources["disk_mb"]) for job in jobs if job.rule == "train"}
    assert len(sizes) > 5 and min(sizes) > 1  # per model, regime and t; U-TAE's 18 MB


def test_a_cluster_run_without_cores_plans(tmp_path: Path) -> None:
    """Under a cluster executor without --cores (no total to share), training takes the CPUs of
    workers auto instead of stopping the workflow at parse time; with the profile, its cores."""
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[slurm]'")
    for args in (["--executor", "slurm"], ["--profile", str(REPO / "profiles" / "slurm")]):
        result = run_snakemake(tmp_path, *args, "--summary")
        assert result.returncode == 0, (args, (result.stdout + result.stderr)[-3000:])
        assert "results/paper/config.yaml\t-\trun_config" in result.stdout, args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def slurm_conf(root: Path, host: str, munge_socket: Path) -> str:
    return f"""\
ClusterName=gfmtune-test
SlurmctldHost={host}
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=0
MinJobAge=3600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
NodeName={host} CPUs=64 RealMemory=128000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
PartitionName=cpu Nodes={host} MaxTime=INFINITE State=UP
"""


def wait_for(check, what: str, timeout: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {log}\n{log.read_text()[-2000:]}" for log in logs if log.exists())
    raise RuntimeError(f"{what} within {timeout:.0f} s\n{tails}")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[dict[str, str]]:
    """A one-node SLURM cluster; yields the environment its clients need."""
    if not all(shutil.which(name) for name in DAEMONS + CLIENTS) or not MUNGE_KEY.exists():
        pytest.skip(INSTALL_HINT)
    if os.geteuid() != 0:
        pytest.skip("the SLURM test starts munged and slurmd, which needs root")
    root = Path(tempfile.mkdtemp(prefix="gfmtune-slurm-"))  # short: socket paths are limited
    root.chmod(0o755)
    for sub in ("state", "spool", "munge", "dev", "bin"):
        (root / sub).mkdir()
    shutil.chown(root / "munge", "munge", "munge")
    munge_socket = root / "munge" / "munge.socket"
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, host, munge_socket))
    for index in (0, 1):  # scheduling-only GPU slots: character devices, as /dev/null
        subprocess.run(["mknod", str(root / "dev" / f"nvidia{index}"), "c", "1", "3"], check=True)
    (root / "gres.conf").write_text(f"NodeName={host} Name=gpu File={root}/dev/nvidia[0-1]\n")
    # The plugin's job step drops every SLURM_* variable (SLURM_CONF too) before its nested
    # srun; on a cluster slurm.conf is in /etc/slurm, here srun gets it back from this shim.
    srun = root / "bin" / "srun"
    srun.write_text(f'#!/bin/sh\nSLURM_CONF={conf} exec {shutil.which("srun")} "$@"\n')
    srun.chmod(0o755)
    env = {"SLURM_CONF": str(conf), "PATH": f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    daemon_env = {**os.environ, **env}
    logs = [root / "munge" / "munged.log", root / "slurmctld.log", root / "slurmd.log"]
    started: list[subprocess.Popen] = []
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.STDOUT}
    try:
        started.append(subprocess.Popen(
            ["munged", "-F", f"--socket={munge_socket}", f"--key-file={MUNGE_KEY}",
             f"--pid-file={root}/munge/munged.pid", f"--log-file={logs[0]}",
             f"--seed-file={root}/munge/munged.seed"],
            user="munge", group="munge", **quiet))  # fmt: skip

        def munge_works() -> bool:
            cred = subprocess.run(["munge", "-n", "-S", str(munge_socket)], capture_output=True)
            check = subprocess.run(["unmunge", "-S", str(munge_socket)], input=cred.stdout,
                                   capture_output=True)  # fmt: skip
            return cred.returncode == 0 and check.returncode == 0

        wait_for(munge_works, "munged did not answer", 20, logs)
        for daemon in ("slurmctld", "slurmd"):
            started.append(subprocess.Popen([daemon, "-D"], env=daemon_env, **quiet))

        def node_idle() -> bool:
            state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=daemon_env,
                                   capture_output=True, text=True)  # fmt: skip
            return set(state.stdout.split()) == {"idle"}  # one line per partition

        wait_for(node_idle, "the SLURM node did not become idle", 60, logs)
        yield env
    finally:
        subprocess.run(["scancel", "--full", "--user", "root"], env=daemon_env, capture_output=True)
        for process in reversed(started):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(root, ignore_errors=True)


def scontrol_job(job_id: str, env: dict[str, str]) -> dict[str, str]:
    """SLURM's record of a job (kept for MinJobAge after it ends) as {key: value}."""
    shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                           text=True, env={**os.environ, **env}, check=True)  # fmt: skip
    return dict(re.findall(r"(\S+?)=(\S*)", shown.stdout))


@pytest.mark.slurm
def test_slurm_profile_runs_training_on_gpus(
    slurm_cluster: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in slurm_cluster.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SLURM_PARTITION", "debug")  # the profile's partition variables
    monkeypatch.setenv("SLURM_CPU_PARTITION", "cpu")
    for name in ("SLURM_ACCOUNT", "GFMTUNE_GPU_MODEL"):
        monkeypatch.delenv(name, raising=False)
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    on_slurm.mkdir(), local.mkdir()
    result = run_snakemake(
        on_slurm, "--profile", str(REPO / "profiles" / "slurm"), "--jobs", "4", "--until", "train",
        "--slurm-no-account", "--slurm-status-command", "squeue", "--retries", "0",
        "--slurm-init-seconds-before-status-checks", "2",
        config=OVERLAY, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]

    # Which SLURM job ran which Snakemake job (Snakemake's log), and what SLURM granted it.
    planned = re.findall(r"rule (\w+):\n(?:    .*\n)*?    jobid: (\d+)", output)
    rule_of = {jobid: rule for rule, jobid in planned}
    submitted = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", output)
    rule_of_slurm = {slurm_id: rule_of[jobid] for jobid, slurm_id in submitted}
    assert sorted(rule_of_slurm.values()) == sorted(
        ["store", "label_splits"] + ["timestep_manifest"] * 2 + ["train"] * 4
    ), output[-4000:]
    assert "localrule download:" in output  # on the submitting host, for its internet
    (download,) = [job for job in planned_jobs(output) if job.rule == "download"]
    assert download.resources["localrule"] == LOCALRULE, download
    granted = {slurm_id: scontrol_job(slurm_id, slurm_cluster) for slurm_id in rule_of_slurm}
    for slurm_id, job in granted.items():
        partition = "debug" if rule_of_slurm[slurm_id] == "train" else "cpu"
        assert job["JobState"] == "COMPLETED" and job["Partition"] == partition, job
        assert job["Requeue"] == "1", job  # the profile's slurm-requeue (cluster default off)
        assert job["Account"] == "(null)", job
        if rule_of_slurm[slurm_id] != "train":  # data jobs: CPU only
            assert "gpu" not in job.get("TresPerJob", ""), job
            cpus, mem_mb, limit = GRANTED[rule_of_slurm[slurm_id]]
            assert (job["NumCPUs"], job["MinMemoryNode"], job["TimeLimit"]) == (
                str(cpus), f"{mem_mb}M", limit), job  # fmt: skip

    # Each training job: one GPU, seen by the job as CUDA_VISIBLE_DEVICES (its log's first
    # line), the profile's CPUs, the overlay's memory and the scaled time limit.
    run = on_slurm / "results" / "slurm"
    cells = sorted((run / "cells").rglob("metrics.json"))
    assert len(cells) == 4
    gpu_of = {}
    for metrics in cells:
        cell = json.loads(metrics.read_text())["cell"]
        log = run / "logs" / "train" / f"{metrics.parent.relative_to(run / 'cells')}.log"
        first = log.read_text().splitlines()[0]
        match = re.fullmatch(r"slurm job (\d+) CUDA_VISIBLE_DEVICES=([01])", first)
        assert match, f"{log}: {first!r}"
        slurm_id, gpu_of[slurm_id] = match.groups()
        job = granted[slurm_id]
        assert rule_of_slurm[slurm_id] == "train", job
        assert job["TresPerJob"] == "gres:gpu:1", job
        cpus, mem_mb, limit = GRANTED[f"train {cell['timesteps']}"]
        assert (job["NumCPUs"], job["MinMemoryNode"], job["TimeLimit"]) == (
            str(cpus), f"{mem_mb}M", limit), job  # fmt: skip
        # its --threads (torch's, in its provenance): the CPUs SLURM allocated it, as far as
        # the job may run on them (Snakemake in the job takes the CPUs allowed to it: on a
        # cluster the allocation's; here SLURM confines nothing, so this machine's)
        provenance = json.loads((metrics.parent / "provenance.json").read_text())
        assert provenance["torch_threads"] == min(cpus, len(os.sched_getaffinity(0))), provenance
    assert len(gpu_of) == 4
    # CPUs and memory fit four at once, GPUs two: at most two ran together, on different GPUs.
    spans = {i: (granted[i]["StartTime"], granted[i]["EndTime"]) for i in gpu_of}
    overlapping = [(a, b) for a, (start_a, end_a) in spans.items()
                   for b, (start_b, end_b) in spans.items()
                   if a < b and start_a < end_b and start_b < end_a]  # fmt: skip
    assert all(gpu_of[a] != gpu_of[b] for a, b in overlapping), (spans, gpu_of)
    assert max(sum(s <= spans[i][0] < e for s, e in spans.values()) for i in spans) == 2, spans

    # The same overlay run locally, with as many torch threads, gives the same test metrics.
    threads = {json.loads((m.parent / "provenance.json").read_text())["torch_threads"]
               for m in cells}  # fmt: skip
    assert len(threads) == 1
    (threads,) = threads
    here = run_snakemake(local, "--cores", str(2 * threads), "--until", "train",
                         "--set-threads", f"train={threads}", config=OVERLAY)  # fmt: skip
    assert here.returncode == 0, here.stderr[-3000:]
    for metrics in cells:
        twin = local / metrics.relative_to(on_slurm)
        provenance = json.loads((twin.parent / "provenance.json").read_text())
        assert provenance["torch_threads"] == threads
        assert json.loads(metrics.read_text())["test"] == json.loads(twin.read_text())["test"]
