"""Model families (pure torch, each scoring itself), their registry, the model file, scoring, threshold, runner."""
