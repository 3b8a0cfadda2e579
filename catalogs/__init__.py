"""Action-space catalogs shipped as data: diffusion templates and reaction entries."""
