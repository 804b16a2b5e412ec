"""The ``fn-trainer`` command line."""
from __future__ import annotations

import argparse
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="fn-trainer",
        description="Functional trainer for MLPs and CNNs on Fashion-MNIST.",
    )


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0
