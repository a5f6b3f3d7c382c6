"""The audit service: deliveries per organisation and the disclosure log, over HTTP."""
