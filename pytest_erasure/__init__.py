"""pytest-erasure: audit whether a concept was really erased from a text-to-image diffusion model.

Importing this package must stay cheap (no torch, no diffusers): pytest loads the plugin on
every run, including runs that never touch a model.
"""

__version__ = "0.1.0"
