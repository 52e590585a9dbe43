"""Shell completion made from the parser (``monai-pipeline completion bash|zsh``): verbs after the command, each
verb's options after the verb, a choice list where an option has one, and file names for everything else.

bash: ``eval "$(monai-pipeline completion bash)"`` (or save it under ``~/.local/share/bash-completion/completions/
monai-pipeline``); zsh: ``eval "$(monai-pipeline completion zsh)"`` (bash's script through ``bashcompinit``).
"""

from __future__ import annotations

import argparse

SHELLS = ("bash", "zsh")


def _options(p: argparse.ArgumentParser) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """(every documented option string, choices of the options that have them, choices of the positionals)."""
    flags, choices, positional = [], {}, []
    for a in p._actions:
        if a.help == argparse.SUPPRESS or isinstance(a, argparse._SubParsersAction):
            continue
        flags += a.option_strings
        for flag in a.option_strings if a.choices else ():
            choices[flag] = [str(c) for c in a.choices]
        if a.choices and not a.option_strings:
            positional += [str(c) for c in a.choices]
    return flags, choices, positional


def bash_script(parser: argparse.ArgumentParser) -> str:
    """A bash completion function for ``parser`` (a ``monai-pipeline`` parser with one subparser per verb)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    top = _options(parser)[0]
    cases, choice_cases = [], []
    for name, p in sub.choices.items():
        flags, choices, positional = _options(p)
        cases.append(f'        {name}) opts="{" ".join(flags)}"; words="{" ".join(positional)}" ;;')
        for flag, values in choices.items():
            choice_cases.append(f'        "{name} {flag}") COMPREPLY=($(compgen -W "{" ".join(values)}" -- "$cur"));'
                                " return ;;")
    return "\n".join([
        "# monai-pipeline completion (made by `monai-pipeline completion bash`)",
        "_monai_pipeline() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" verb="" i opts',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        [[ "${COMP_WORDS[i]}" != -* ]] && { verb="${COMP_WORDS[i]}"; break; }',
        "    done",
        '    if [[ -z "$verb" ]]; then',
        f'        COMPREPLY=($(compgen -W "{" ".join(sub.choices)} {" ".join(top)}" -- "$cur")); return',
        "    fi",
        '    case "$verb $prev" in',
        *choice_cases,
        "    esac",
        '    case "$verb" in',
        *cases,
        '        *) opts=""; words="" ;;',
        "    esac",
        '    if [[ "$cur" == -* ]]; then COMPREPLY=($(compgen -W "$opts" -- "$cur"));',
        '    elif [[ -n "$words" ]]; then COMPREPLY=($(compgen -W "$words" -- "$cur"));',
        '    else COMPREPLY=($(compgen -f -- "$cur")); fi',
        "}",
        "complete -o filenames -F _monai_pipeline monai-pipeline",
        "",
    ])


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``shell`` (one of :data:`SHELLS`)."""
    if shell == "zsh":
        return "autoload -U +X bashcompinit && bashcompinit\n" + bash_script(parser)
    return bash_script(parser)
