"""dpd: a daemon that runs diffusion-pipe trainings on the GPUs of one machine."""

__version__ = "0.1.0"
