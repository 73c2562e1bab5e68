"""``gfmtune plan``: what the configured grid costs before it runs: FLOPs, GPU-hours and disk.

:mod:`~gfmtune.plan.load` reads the configuration as the workflow does, :mod:`gfmtune.cells`
gives its cells, :mod:`~gfmtune.plan.flops` counts each model's FLOPs on the meta device
(cached in ``resources/flops.json`` by :mod:`~gfmtune.plan.flop_table`),
:mod:`~gfmtune.plan.cost` prices the cells, :mod:`~gfmtune.plan.disk` sizes each stage and
:mod:`~gfmtune.plan.report` prints both; :mod:`~gfmtune.plan.command` is the command.
"""
