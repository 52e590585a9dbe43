"""``monai-pipeline``: the parser built from the verb modules, logging, and one line per error.

Errors in the input or configuration print one line (``monai-pipeline: error: <file>: <problem>``) and exit
with code 2; a batch in which some cases failed exits with 1 after finishing the others.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from monai_pipeline import __version__
from monai_pipeline.cli import completion, data, demo, evaluation, inference, lidc, system, training
from monai_pipeline.cli.args import EXIT_INPUT, EXIT_INTERNAL, Verb, check_declared_paths

#: libraries whose INFO lines would crowd the project's own; shown with -v
NOISY = ("monai", "ignite", "PIL", "matplotlib", "highdicom", "pydicom", "urllib3", "fsspec")


def add_completion(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", choices=completion.SHELLS,
                   help='the shell; e.g. eval "$(monai-pipeline completion bash)" in ~/.bashrc')


def run_completion(a: argparse.Namespace) -> int:
    print(completion.script(build_parser(), a.shell), end="")
    return 0


#: every verb, in the order ``--help`` lists them
VERBS: dict[str, Verb] = {v.name: v for group in (data, training, inference, evaluation, demo, lidc, system)
                          for v in group.VERBS}
VERBS["completion"] = Verb("completion", "print a shell completion script (bash, zsh)", add_completion,
                           run_completion)


class DefaultsShown(argparse.HelpFormatter):
    """Help lines end with the option's default, unless the text already says it or there is none to say."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        shown = ",".join(map(str, action.default)) if isinstance(action.default, tuple | list) else action.default
        return f"{text} (default: {shown})"


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: one subparser per verb, its arguments added by the verb's own module."""
    p = argparse.ArgumentParser(prog="monai-pipeline",
                                description="MONAI-based CT segmentation: DICOM/NIfTI in, geometry-exact masks out.")
    p.add_argument("--version", action="version", version=f"monai-pipeline {__version__}")
    _add_global_options(p, argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, verb in VERBS.items():
        sp = sub.add_parser(name, help=verb.help, description=verb.help,
                            formatter_class=DefaultsShown)
        verb.add_arguments(sp)
        _add_global_options(sp, argparse.SUPPRESS)  # accepted after the verb too
    p.set_defaults(verbose=False, quiet=False, debug=False)
    return p


def _add_global_options(p: argparse.ArgumentParser, default) -> None:
    g = p.add_argument_group("output")
    g.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="debug logging, and the libraries' INFO lines")
    g.add_argument("-q", "--quiet", action="store_true", default=default, help="warnings and errors only")
    g.add_argument("--debug", action="store_true", default=default,
                   help="show the full traceback of an error (and library warnings)")


def check_device(device: str | None) -> None:
    """``--device cuda`` on a machine without a CUDA GPU (or a CPU build of torch): one line, before any work."""
    if device is None or not device.startswith("cuda"):
        return
    import torch  # deferred with the library (see cli.args)

    from monai_pipeline.errors import InputError

    if not torch.cuda.is_available():
        build = "a CPU build of torch" if torch.version.cuda is None else f"torch {torch.__version__}, no GPU visible"
        raise InputError(None, f"--device {device}: no CUDA GPU is available ({build})",
                         hint="use --device cpu, or install a CUDA build of torch on a machine with a GPU")
    if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise InputError(None, f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")


def describe(err: BaseException) -> str:
    """One line for an error the library did not map itself: the file when the error names one."""
    if isinstance(err, OSError) and err.filename:
        return f"{err.filename}: {err.strerror or err.__class__.__name__}"
    text = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
    return f"{err.__class__.__name__}: {text}"[:300]


def _quiet_libraries(debug: bool) -> None:
    """Library warnings (pydicom, nibabel, ITK's own console output) would print beside the project's one-line
    message; they are shown only with --debug."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
    if debug:
        return
    warnings.filterwarnings("ignore")
    import SimpleITK as sitk  # deferred with the library (see cli.args)

    sitk.ProcessObject.SetGlobalWarningDisplay(False)


def main(argv: list[str] | None = None) -> int:
    """The ``monai-pipeline`` command; returns the exit status. As a console command (``argv`` None), a verb
    without teardown (``infer``) ends with :func:`~monai_pipeline.runtime.end_process` once its outputs are
    written, and so does a process started by torchrun (``WORLD_SIZE`` > 1), whatever the verb: gloo's threads
    can abort the interpreter's normal teardown after a successful run, and every result is already written
    atomically."""
    args = build_parser().parse_args(argv)
    rc = run(args)
    if argv is None and (not VERBS[args.command].teardown or int(os.environ.get("WORLD_SIZE", "1")) > 1):
        from monai_pipeline.runtime import end_process

        end_process(rc)
    return rc


def run(args: argparse.Namespace) -> int:
    """Check the declared paths, run the verb, and map its errors to one line and an exit status."""
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S")
    logging.getLogger().setLevel(level)  # also when logging was configured before (the Python API, tests)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.NOTSET if args.verbose else logging.WARNING)
    _quiet_libraries(args.debug)
    from monai_pipeline.errors import EXIT_PREEMPTED, PipelineError, Preempted

    try:
        check_declared_paths(args)
        check_device(getattr(args, "device", None))
        return VERBS[args.command].run(args)
    except Preempted as err:
        print(f"monai-pipeline: preempted: {err}", file=sys.stderr)
        return EXIT_PREEMPTED
    except PipelineError as err:
        if args.debug:
            raise
        print(f"monai-pipeline: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("monai-pipeline: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, RuntimeError, MemoryError) as err:
        if args.debug:
            raise
        print(f"monai-pipeline: error: {describe(err)} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_INPUT
    except Exception as err:  # noqa: BLE001 - an internal error still gets one line; --debug shows the traceback
        if args.debug:
            raise
        print(f"monai-pipeline: internal error: {describe(err)} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
