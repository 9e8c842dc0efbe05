"""The model: pure torch networks, the self-describing model file, scoring, the threshold, the runner."""
