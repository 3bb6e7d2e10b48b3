"""Training: state, pure steps, the loop and checkpoints."""
