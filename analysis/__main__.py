"""``python -m analysis ...`` (see analysis/cli.py)."""

from analysis.cli import run

if __name__ == "__main__":
    run()
