"""CPU numerics that do not depend on the machine (``train.settings.cpu_numerics``).

By default torch, MKL, oneDNN and numpy each pick the fastest kernels the CPU offers, so the
same cell trained on an AVX2 and on an AVX-512 CPU gives different numbers (a float's last
bits differ in the first step, and training amplifies them). ``portable`` fixes every such
choice to one that all x86-64 CPUs with AVX2 make alike:

- torch's own kernels: the ``default`` (non-vectorised) build, not AVX2 or AVX-512
  (``ATEN_CPU_CAPABILITY``);
- MKL (torch's matrix products): the ``COMPATIBLE`` branch, SSE2 without the approximate
  ``rcpps``/``rsqrtps`` (whose results differ between Intel and AMD); MKL accepts the other
  fixed branches on Intel CPUs only and silently runs its automatic choice elsewhere
  (``MKL_CBWR``);
- oneDNN and NNPACK (convolutions; their kernels and blocking follow the CPU's ISA and cache
  sizes): off, so convolutions run as im2col and an MKL product;
- numpy: no AVX-512 kernels (``NPY_DISABLE_CPU_FEATURES``).

The first three variables are read once, when the libraries start, so ``gfmtune train``
restarts itself with them set (:func:`missing_environment`, :mod:`gfmtune.cli`). The thread
count must also agree: a reduction split over threads adds in another order. docs/performance.md
("CPU results across machines") has what it costs and what it was checked on.
"""

from __future__ import annotations

import os

import torch

MODES = ("native", "portable")

#: the environment of a portable run, read by the libraries when they start
PORTABLE_ENV: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    # numpy 2.x names the AVX-512 groups X86_V4 ...; numpy 1.x AVX512F ...; unknown names are
    # ignored, so both lists go in.
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR AVX512F AVX512CD AVX512_SKX "
    "AVX512_CLX AVX512_CNL",
}


def missing_environment(mode: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables ``mode`` needs that ``environ`` (default: this process's) lacks or sets
    otherwise: empty when the process can go on as it is."""
    environ = os.environ if environ is None else environ
    if mode != "portable":
        return {}
    return {k: v for k, v in PORTABLE_ENV.items() if environ.get(k) != v}


def apply(mode: str) -> None:
    """Set torch's switches for ``mode`` in this process; for ``portable``, check that its
    environment took effect (it must be set before the process starts)."""
    if mode not in MODES:
        raise ValueError(f"cpu_numerics {mode!r}: choose from {', '.join(MODES)}")
    portable = mode == "portable"
    torch.backends.mkldnn.enabled = not portable
    torch.backends.nnpack.set_flags(not portable)
    if not portable:
        return
    missing = missing_environment(mode)
    capability = torch.backends.cpu.get_cpu_capability()
    if missing or capability != "DEFAULT":
        env = " ".join(f"{k}={v!r}" for k, v in PORTABLE_ENV.items())
        raise ValueError(
            f"cpu_numerics 'portable' needs its environment set before Python starts (torch "
            f"runs {capability} kernels here): run `gfmtune train` as a command (it restarts "
            f"itself with it), or start Python with {env}"
        )


def describe() -> dict[str, object]:
    """What fixes this process's CPU numerics, for a cell's provenance."""
    return {
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.enabled,
        **{k: os.environ.get(k) for k in PORTABLE_ENV},
    }
