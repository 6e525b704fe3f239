"""Comparison methods of Table I (zero-filled, fastMRI U-Net, ...), each trained and run by the same loops."""
