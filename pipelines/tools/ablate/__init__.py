"""Ablations: a grid of configurations run as MLflow child runs under one parent run, and a
comparison table. ``spec`` reads and checks a grid file, ``runner`` runs it (through the stages'
own training and evaluation helpers), ``tables`` writes the comparison table.

    python -m pipelines.tools.ablate v3_inference              # ablations/v3_inference.yaml
    python -m pipelines.tools.ablate path/to/grid.yaml --out DIR

A grid is a YAML file (the shipped ones are in `ablations/`):

    name: v3_inference            # optional, defaults to the file's stem
    kind: inference               # inference: one trained model, evaluated per configuration
                                  # train: each configuration trained briefly, then evaluated
    title: ...                    # table heading
    description: ...              # shown under the heading
    model: models/finetune/model.pt           # inference only; relative to base.data_dir
    crf_params: crf_search/best_params.json   # needed when a configuration sets inference.crf
    eval_set: val_holdout         # val_holdout (default) | val | crf_cv, split as the evaluate stage
    cumulative: false             # true: each configuration overlays the one before it
    columns: [model.aspp_rates]   # optional: the settings shown as columns (default: every
                                  # setting whose value differs between the rows)
    base: {...}                   # overlay of params.yaml shared by every configuration
    configs:                      # one row each: a name and an overlay of params.yaml
      - name: OS8
        inference: {output_stride: 8}
        compare_to: OS16          # optional: the row its Δ mIoU is taken against (default:
                                  # the first row, or the previous one when cumulative)
        paper: "78.51 (v3 Table 6)"   # optional: the paper's figure for this row, shown
                                  # in its own column beside what this run measured

Every configuration is params.yaml, then single-scale, no-flip, no-CRF evaluation at the training
output stride, then `base`, then its own overlay (applied on top of the previous configuration
when cumulative), validated by the project's schemas. Only the keys that make sense for the kind may
vary: evaluation keys for an inference grid; the model, the training budget (`finetune`) and the
seed as well for a train grid. A train grid trains every configuration from scratch on
train_aug, as the finetune stage would, for `finetune.iterations` steps.

MLflow: one parent run (tags `stage=ablation`, `grid=<name>`) with the grid file and the table as
artifacts; one child run per configuration (tag `mlflow.parentRunId`) with its settings as params,
its metrics (`miou` and the rest) and, for a train grid, its weights. The table is written to
`<data_dir>/ablations/<name>/table.md` and `table.csv` (or `--out DIR`).
"""

from pipelines.tools.ablate.runner import (Shared, ablate_flow, check_inputs, eval_ids, main,
                                           run_config, run_grid)
from pipelines.tools.ablate.spec import (ABLATIONS, EVAL_DEFAULTS, VARIABLE_KEYS, Config, Grid,
                                         GridError, GridFile, grid_path, load_grid, shown)
from pipelines.tools.ablate.tables import (header_lines, setting_columns, table_rows,
                                           write_tables)

__all__ = ["ABLATIONS", "Config", "EVAL_DEFAULTS", "Grid", "GridError", "GridFile", "Shared",
           "VARIABLE_KEYS", "ablate_flow", "check_inputs", "eval_ids", "grid_path",
           "header_lines", "load_grid", "main", "run_config", "run_grid", "setting_columns",
           "shown", "table_rows", "write_tables"]
