"""``python -m budgetopt``: the command-line interface."""

import sys

if __name__ == "__main__":
    try:
        from .cli import console
    except KeyboardInterrupt:  # Ctrl-C while the package is still being imported
        sys.stderr.write("budgetopt: interrupted\n")
        sys.exit(130)
    sys.exit(console())
