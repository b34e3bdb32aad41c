"""pytest-erasure: audit whether a concept was really erased from a text-to-image diffusion model.

Importing this package must stay cheap (no torch, no diffusers): pytest loads the plugin on
every run, including runs that never touch a model.
"""

__version__ = "0.1.0"

PROTOCOL_VERSION = 1
"""How this release computes its numbers (images, detection, CRR, intervals, gates). A release
that changes how any number is computed bumps it, and `--erasure-compare` refuses to compare
audits of different protocol versions (equal versions: comparable numbers)."""
