"""Op-by-op profiles (`python -m bench ops`): where each runtime spends a workload's time, by op category."""
