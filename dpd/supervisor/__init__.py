"""GPUs, scheduling, launching through the per-job shim, parsing trainer output."""
