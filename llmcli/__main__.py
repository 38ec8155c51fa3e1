"""The ``llmcli`` console script and ``python -m llmcli``."""

import sys


def main() -> None:
    """Import the Typer app and run it (:func:`llmcli.cli.app.main`).

    A Ctrl-C while the imports run (typer, rich: tens of milliseconds) exits with 130 and no
    traceback, as it does later on.
    """
    try:
        from llmcli.cli.app import main as run
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()
