"""The model catalog (which diffusion-pipe model types this box can train and where their
weights come from) and resumable, verified model downloads (api.md §6)."""
