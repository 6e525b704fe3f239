"""Networks: SwinIR (Sketcher's repair model R and the SwinMR baseline), the latent-diffusion parts
(VAE / U-Net configs and loaders, encode/decode helpers) and MRControlNet (IRControlNet, eqs. 6–7)."""
