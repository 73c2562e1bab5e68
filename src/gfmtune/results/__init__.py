"""Results: aggregation, the paper's tables and figures, claims check."""
