# LDPM: natural-image pretraining (embedded), Sketcher, MR-VAE, MRControlNet, Dual-Stage Sampler, ablations.
