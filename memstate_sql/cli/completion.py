"""`completion bash|zsh`: a shell-completion script generated from the argument parser."""

from __future__ import annotations

import argparse
from typing import Any

_BASH = """# bash completion for memstate-sql; install with:
#   memstate-sql completion bash > ~/.local/share/bash-completion/completions/memstate-sql
_memstate_sql() {
    local cur prev cmd i
    cur="${COMP_WORDS[COMP_CWORD]}"
    prev="${COMP_WORDS[COMP_CWORD-1]}"
    cmd=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            -*) ;;
            *) if [[ " %(commands)s " == *" ${COMP_WORDS[i]} "* ]]; then cmd="${COMP_WORDS[i]}"; break; fi ;;
        esac
    done
    case "$prev" in
        --output|-o|--path) COMPREPLY=( $(compgen -f -- "$cur") ); return ;;
    esac
    local opts
    case "$cmd" in
%(cases)s
        *) opts="%(global)s %(commands)s" ;;
    esac
    COMPREPLY=( $(compgen -W "$opts" -- "$cur") )
    if [[ "$cmd" == "import" && "$cur" != -* ]]; then COMPREPLY+=( $(compgen -f -- "$cur") ); fi
}
complete -F _memstate_sql memstate-sql
"""

_ZSH_PREAMBLE = """#compdef memstate-sql
# zsh completion for memstate-sql; install with:
#   memstate-sql completion zsh > "${fpath[1]}/_memstate-sql"
autoload -U +X bashcompinit && bashcompinit
"""


def _options(parser: argparse.ArgumentParser) -> list[str]:
    found: list[str] = []
    for action in parser._actions:
        found.extend(s for s in action.option_strings if s.startswith("--"))
    return found


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    commands = _subcommands(parser)
    cases = []
    for name, sub in commands.items():
        words = _options(sub)
        if name == "completion":
            words += ["bash", "zsh"]
        cases.append(f'        {name}) opts="{" ".join(words)}" ;;')
    bash = _BASH % {
        "commands": " ".join(commands),
        "cases": "\n".join(cases),
        "global": " ".join(_options(parser)),
    }
    if shell == "zsh":
        return _ZSH_PREAMBLE + bash
    return bash


def cmd_completion(args: Any) -> int:
    print(script(args.root_parser, args.shell), end="")
    return 0
