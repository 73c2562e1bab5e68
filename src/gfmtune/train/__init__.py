"""Training: one reproducible, resumable job per grid cell."""
