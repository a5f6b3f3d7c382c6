"""Run webhook delivery: `python -m consumers.webhooks`."""

from consumers.webhooks.app import main

if __name__ == "__main__":
    main()
