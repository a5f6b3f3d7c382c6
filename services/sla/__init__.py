"""The SLA engine: obligations between agencies, tracked in PostgreSQL, breaches as alerts."""
