"""Developer tooling: the local stack and the test harness; production images do not carry it."""
