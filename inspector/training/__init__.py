"""Fitting models to good images and measuring them: training, synthetic anomalies, evaluation, baselines."""
