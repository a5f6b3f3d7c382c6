"""Stops a test stack whose owner died without stopping it (a test run killed by a timeout).

The broker, the database and the services run in their own sessions so that `carebus up`
outlives the CLI; for a test stack that would leak processes, so this watchdog waits for the
owning process to disappear and then tears the stack down. Run as
`python -m carebus_dev.stack.watchdog <owner pid>` with the stack's CAREBUS_* environment.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

from carebus.runtime.config import Settings
from carebus_dev.stack.local import LocalStack
from carebus_dev.stack.process import is_alive


def main(argv: list[str]) -> int:
    owner = int(argv[1])
    while is_alive(owner):
        time.sleep(1.0)
    settings = Settings()
    stack = LocalStack(settings, durable=False)
    stack.down()
    if os.environ.get("CAREBUS_KEEP_TEST_STACK") != "1":
        stack.postgres.remove()
        shutil.rmtree(settings.state_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
