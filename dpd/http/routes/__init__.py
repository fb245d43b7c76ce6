"""Route modules, one per area of the API; each exposes ``setup(app, ...)``."""
