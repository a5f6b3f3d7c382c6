"""The local infrastructure carebus owns: Kafka and PostgreSQL processes, topics, services."""

from carebus.stack.local import ComponentStatus, LocalStack
from carebus.stack.process import StackError

__all__ = ["ComponentStatus", "LocalStack", "StackError"]
