"""Alerts: a training that went wrong in a way its process does not notice (NaN/Inf loss, a
loss explosion, a stalled run), found from its events and recorded as ``alert`` events."""
