"""The simulated diffusion-pipe checkout (train.py and its stdlib-only sibling modules).

A package only so that it ships with dpd; train.py runs as a script with this folder as
its working directory, and imports its siblings by their bare names."""
