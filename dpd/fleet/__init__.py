"""Fleet mode: several dpd hosts share one queue on NATS JetStream (FLEET.md)."""
