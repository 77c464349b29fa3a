"""``python -m k3p`` and the ``k3p`` console script."""

import signal
import sys


def _stop_before_start(signum: int, _frame: object) -> None:
    # SIGTERM while k3p is still importing: nothing has started yet, so this is a clean stop.
    raise SystemExit(0)


def run() -> None:
    # Installed before the heavier imports so that even an early SIGTERM ends with code 0.
    signal.signal(signal.SIGTERM, _stop_before_start)
    from k3p.cli import main

    sys.exit(main())


if __name__ == "__main__":
    run()
