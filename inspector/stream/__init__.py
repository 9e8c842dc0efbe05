"""The streaming worker: poll, decode, batch, score, publish, commit; its metrics, health and model reload."""
