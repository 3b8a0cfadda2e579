"""LEADS engine: meshes, reaction and diffusion models, simulation, data sets, training, metrics.

A pure library: no MCP, no LLM. The layers above (``leads_server``, ``leads_agent``) use it.
"""

__version__ = "0.1.0"
