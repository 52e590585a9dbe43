"""The README's command table, made from the parser (``python -m monai_pipeline.cli.table``), so the two cannot
drift apart: one row per verb with its required arguments, what it does, and every option."""

from __future__ import annotations

import argparse

from monai_pipeline.cli.app import build_parser

START, END = "<!-- commands:start (python -m monai_pipeline.cli.table) -->", "<!-- commands:end -->"
#: options every verb takes (listed once, under the table)
COMMON = ("-h", "-v", "-q", "--debug")


def _spelling(a: argparse.Action) -> str:
    flag = a.option_strings[-1] if a.option_strings else a.dest.upper()
    if isinstance(a, argparse.BooleanOptionalAction):
        return f"{a.option_strings[0]}/--no-{a.option_strings[0][2:]}"
    if a.nargs == 0 or not a.option_strings:
        return flag
    return f"{flag} {a.metavar or a.dest.upper()}"


def command_table() -> str:
    """Markdown: | command | what it does | options |."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    rows = ["| command | what it does | options |", "| --- | --- | --- |"]
    for name, p in sub.choices.items():
        actions = [a for a in p._actions if a.help != argparse.SUPPRESS and not set(a.option_strings) & set(COMMON)]
        required = [_spelling(a) for a in actions if a.required or not a.option_strings]
        groups = [g for g in p._mutually_exclusive_groups if g.required]
        for g in groups:
            required.append("(" + " \\| ".join(_spelling(a) for a in g._group_actions) + ")")
        in_group = {a for g in groups for a in g._group_actions}
        optional = [_spelling(a) for a in actions if not (a.required or not a.option_strings) and a not in in_group]
        command = " ".join(["monai-pipeline", name, *required])
        rows.append(f"| `{command}` | {p.description} | {', '.join(f'`{o}`' for o in optional)} |")
    rows.append("")
    rows.append("Every command also takes `-v` (debug logging and the libraries' INFO lines), `-q` (warnings and "
                "errors only) and `--debug` (tracebacks), before or after the command; `monai-pipeline COMMAND -h` "
                "explains each option.")
    return "\n".join(rows)


if __name__ == "__main__":
    print(START)
    print(command_table())
    print(END)
