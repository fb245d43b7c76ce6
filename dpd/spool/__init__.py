"""The spool: intake of dropped files, the durable job store, recovery after a crash."""
