"""Training: typed configs, data sets, the optimiser, the Trainer and its run directory, studies and result
tables (import the submodules: ``eqprop.training.trainer`` and so on)."""
