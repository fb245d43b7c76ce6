"""train.log's own home: how its lines are classified, its persisted line index, the line
counts kept of it, and the reading of it as it grows. Below both the supervisor (which
follows a live log) and the logs API (which reads one back); imports nothing above it."""
