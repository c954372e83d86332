"""What the two command lines (``train.py``, ``generate.py``) share."""

from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """A command-line mistake is one ``error: ...`` line (and exit code 2), not the
    usage text followed by the error."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")
