"""The GPU conformance kit: dpd driving the real diffusion-pipe on one NVIDIA GPU.

``bench/gpu/conformance.sh`` is the one command (``--simulate`` rehearses it on the CPU
against dpd's stand-in trainer). The modules here are stdlib-only, except ``tiny_flux``,
which builds the tiny model with torch, diffusers and transformers.
"""
