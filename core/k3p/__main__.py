"""``python -m k3p`` and the ``k3p`` console script."""

import signal
import sys

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def hold_stop_signals() -> None:
    """Keep SIGTERM/SIGINT pending until the event loop can act on them (see release_stop_signals)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def release_stop_signals() -> None:
    """Deliver any SIGTERM/SIGINT that arrived during start-up to the handlers now installed."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def run() -> None:
    # Before the heavier imports: a SIGTERM during start-up waits for the event loop's handler
    # (which stops cleanly with code 0) instead of killing the process half-way.
    hold_stop_signals()
    from k3p.cli import main

    sys.exit(main())


if __name__ == "__main__":
    run()
