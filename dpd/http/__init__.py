"""The aiohttp application: middlewares, routes, server-sent events and WebSocket."""
