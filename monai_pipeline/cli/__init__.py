"""The ``monai-pipeline`` command line: one module per group of verbs (``data``, ``training``, ``inference``,
``evaluation``, ``demo``, ``lidc``), each holding every verb's arguments and its run function side by side over
the library; :mod:`.app` builds the parser from them and maps errors to exit codes."""

from monai_pipeline.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
