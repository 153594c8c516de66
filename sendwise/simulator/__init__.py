"""The simulator: synthetic worlds in the data contract, with the ground truth that made them."""
