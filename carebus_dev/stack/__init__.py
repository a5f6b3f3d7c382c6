"""The local infrastructure carebus owns: Kafka and PostgreSQL processes, topics, services."""

from carebus_dev.stack.local import ComponentStatus, LocalStack
from carebus_dev.stack.process import StackError

__all__ = ["ComponentStatus", "LocalStack", "StackError"]
