"""Training for galactic coordination: the simulator, central and federated fits, evaluation."""
