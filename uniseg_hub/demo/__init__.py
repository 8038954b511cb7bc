"""``make demo`` / ``python -m uniseg_hub.demo``: transfer of the embedded demo weights to a task they never saw,
against the same network from scratch (:mod:`.run`), on real template brains (:mod:`.data`), with its figures
(:mod:`.figures`)."""

from .run import (
    DEFAULT_WEIGHTS,
    RECORD,
    DemoBudget,
    demo_train_config,
    downstream_task,
    format_seeds_table,
    format_table,
    main,
    run_demo,
    run_seeds,
    summarise_seeds,
)

__all__ = ["DEFAULT_WEIGHTS", "RECORD", "DemoBudget", "demo_train_config", "downstream_task", "run_demo", "run_seeds",
           "summarise_seeds", "format_table", "format_seeds_table", "main"]
