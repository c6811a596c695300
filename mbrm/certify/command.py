"""``mbrm certify``: write or check a finished run's safety certificate.

    mbrm certify RUN_DIR --suite SUITE.yaml [--out DIR] [--no-progress]
    mbrm certify --verify CERTIFICATE.json RUN_DIR --suite SUITE.yaml

The certificate goes to ``DIR`` (default ``RUN_DIR/certificates/<suite name>/``) as
``certificate.json`` and ``certificate.md``. ``--verify`` recomputes it and exits with
status 1, naming the keys that differ, unless the bytes are identical.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mbrm.certify.certificate import certify, verify, write

USAGE = (
    "usage: mbrm certify RUN_DIR --suite SUITE.yaml [--out DIR] [--no-progress] | "
    "mbrm certify --verify CERTIFICATE.json RUN_DIR --suite SUITE.yaml"
)
_VALUED = ("--suite", "--out", "--verify")


def parse(argv: list[str]) -> tuple[Path, Path, Path | None, Path | None, bool]:
    """(run_dir, suite, out, verify, progress) from the command line; ValueError if bad."""
    values: dict[str, str] = {}
    positional, progress = [], True
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _VALUED:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ValueError(f"{arg} needs a value; {USAGE}")
            values[arg] = argv[i + 1]
            i += 2
            continue
        if arg == "--no-progress":
            progress = False
        elif arg.startswith("--"):
            raise ValueError(f"unknown option {arg!r}; {USAGE}")
        else:
            positional.append(arg)
        i += 1
    if len(positional) != 1 or "--suite" not in values:
        raise ValueError(USAGE)
    if "--verify" in values and "--out" in values:
        raise ValueError(f"--verify checks a certificate and writes none: drop --out; {USAGE}")
    run_dir, suite = Path(positional[0]), Path(values["--suite"])
    out = Path(values["--out"]) if "--out" in values else None
    check = Path(values["--verify"]) if "--verify" in values else None
    return run_dir, suite, out, check, progress


def main(argv: list[str]) -> None:
    """Run the command; user errors are ValueErrors (the CLI prints one line, status 2)."""
    from mbrm.certify.suite import load_suite
    from mbrm.progress import StepProgress
    from mbrm.run import FinishedRun

    run_dir, suite_path, out, check, progress = parse(argv)
    run = FinishedRun(run_dir)
    suite = load_suite(suite_path, run.task)  # refused here, before any model loads
    length = run.settings.task.episode_length or run.task.episode_length
    total = sum(sc.episodes * (sc.episode_length or length) for sc in suite.scenarios)
    with StepProgress(total, desc="certify", enabled=progress and sys.stderr.isatty()) as bar:
        if check is not None:
            diff = verify(check, run_dir, suite_path, bar.step)
        else:
            cert = certify(run_dir, suite_path, bar.step)
    if check is not None:
        if diff:
            shown = ", ".join(diff[:8]) + (f" and {len(diff) - 8} more" if len(diff) > 8 else "")
            print(f"mbrm: certificate {check} does NOT match a fresh run: {shown}", file=sys.stderr)
            raise SystemExit(1)
        print(f"mbrm: certificate {check} verified: the recomputed bytes are identical")
        return
    out = out or run_dir / "certificates" / suite_path.stem
    js, md = write(cert, out)
    total_ = cert["overall"]
    print(
        f"mbrm: {total_['episodes']} episodes in {len(cert['scenarios'])} scenarios, "
        f"{total_['unacceptable_episodes']} with an unacceptable step (95% upper bound "
        f"{total_['unacceptable_fraction_upper']:.4f}); certificate written to {js} and {md}"
    )
