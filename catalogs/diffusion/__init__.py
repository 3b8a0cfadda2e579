"""Diffusion templates: one self-contained source file per operator."""
