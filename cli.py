"""Run the infra command line from a checkout: `python cli.py up -f cluster.yaml`."""

from infra.cli import program

if __name__ == "__main__":
    program()
