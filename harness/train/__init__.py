"""Training: losses, metrics, optimisation, early stopping, checkpoints and the loop that ties them."""
