"""Samplers: the LDPM Dual-Stage Sampler (eqs. 8–12) over a respaced DDPM chain."""
