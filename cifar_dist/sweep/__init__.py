"""Hyperparameter search over any config keys, with Optuna (`pip install cifar-dist[sweep]`).

    python -m cifar_dist.sweep sweeps/tutorial_fast_lr_wd.yaml --study studies/lr-wd   # one worker; start more
    sbatch --array=0-3 slurm/sweep.sbatch --study studies/lr-wd sweeps/tutorial_fast_lr_wd.yaml
    python -m cifar_dist.sweep --report studies/lr-wd

Modules: space (the YAML, checked against the config's declarations), study (the folder, the journal,
heartbeats), trial (one run through the launcher), worker (the loop), pruning (inside the training
processes), report (table, best command, figures), cli; toolkit is the one place that imports the rest
of cifar-dist. Nothing is imported here, so `cifar_dist.sweep.pruning` loads without Optuna's weight.
"""
