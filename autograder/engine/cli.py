"""The command line: ``python -m autograder grade <assignment_id> <submitted_dir> [options]``.

Grades every submission (see ``autograder.engine.grading``), shows a progress bar on stderr
while it works, then a summary. Exit status: 0 when every submission was graded (whatever the
students scored); 2 for a usage error or an unknown assignment; 3 when the self-check failed
(the reference solutions did not get full marks: nobody was graded); 4 when the grader failed
on some submissions (they are listed as "not graded: grader error" and have no score); 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from autograder.engine.grading import GradingError, Interrupted, SelfCheckFailed, Summary, grade
from autograder.sandbox import Limits

EXIT_USAGE = 2
EXIT_SELF_CHECK = 3
EXIT_GRADER_ERRORS = 4
EXIT_INTERRUPTED = 130


class Progress:
    """A progress bar on a terminal, a line every few seconds anywhere else."""

    def __init__(self, stream=None, width: int = 30, every_s: float = 5.0):
        self.stream = stream or sys.stderr
        self.width, self.every_s = width, every_s
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.total = self.done = 0
        self.started = self.last_line = time.monotonic()

    def start(self, total: int) -> None:
        self.total, self.done = total, 0
        self.started = self.last_line = time.monotonic()
        if total:
            self._write(f"grading {total} submissions", force=True)

    def advance(self, record: dict) -> None:
        self.done += 1
        self._write(f"{record['student']}: {record['score']:g}/{record['max_score']:g}")

    def finish(self) -> None:
        if self.tty and self.total:
            self.stream.write("\n")
            self.stream.flush()

    def _write(self, note: str, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            filled = self.width * self.done // max(self.total, 1)
            bar = "#" * filled + "." * (self.width - filled)
            line = f"[{bar}] {self.done}/{self.total} {self._eta(now)} {note}"
            self.stream.write("\r\x1b[K" + line[:120])
        elif force or self.done == self.total or now - self.last_line >= self.every_s:
            self.stream.write(f"{self.done}/{self.total} graded {self._eta(now)}\n")
            self.last_line = now
        self.stream.flush()

    def _eta(self, now: float) -> str:
        if not self.done or self.done >= self.total:
            return f"({now - self.started:.0f}s)"
        left = (now - self.started) / self.done * (self.total - self.done)
        return f"(about {left:.0f}s left)"


def format_summary(summary: Summary) -> str:
    lines = [
        f"{summary.assignment}: {summary.students} students "
        f"({summary.graded_now} graded now, {summary.skipped} already graded)",
        f"mean score {summary.mean_score:.2f} / {summary.max_score:g}",
    ]
    if summary.failed_checks:
        lines.append("checks failed most:")
        lines += [f"  {count:4d}  {name}" for name, count in summary.failed_checks]
    if summary.forged:
        lines.append(
            f"records not written by this grader, graded again ({len(summary.forged)}): "
            + ", ".join(summary.forged)
        )
    if summary.self_checked:
        lines.append("self-check passed: the reference solutions got full marks the same way")
    if summary.not_graded:
        lines.append(f"not graded ({len(summary.not_graded)}):")
        lines += [f"  {student}: {reason}" for student, reason in summary.not_graded.items()]
    if summary.problems:
        lines.append(f"notebook problems ({len(summary.problems)} submissions):")
        lines += [f"  {student}: {'; '.join(p)}" for student, p in summary.problems.items()]
    if summary.gradebook_note:
        lines.append(summary.gradebook_note)
        lines.append(f"suspected tampering: {len(summary.tampering)}")
        lines += [
            f"  {s.student} {s.function}: {s.kernel_score:g} in the kernel, {s.engine_score:g} here"
            for s in summary.tampering
        ]
    isolation = ", ".join(f"{level} ({n})" for level, n in summary.isolation.items())
    lines.append(f"isolation: {isolation or 'no code ran in this run'}")
    lines.append(f"results in {summary.out_dir} (grades.csv, feedback/, records/)")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="python -m autograder", description=__doc__.split("\n")[0])
    commands = main.add_subparsers(dest="command", required=True)
    grading = commands.add_parser("grade", help="grade every submission of one assignment")
    grading.add_argument("assignment_id")
    grading.add_argument("submitted_dir", type=Path, help="<student_id>/<assignment_id>/*.ipynb")
    grading.add_argument("--json", type=Path, dest="json_path", help="write the records here")
    grading.add_argument("--out", type=Path, help="output folder (grading/<assignment_id>)")
    grading.add_argument("--workers", type=positive, help="parallel sandboxes (CPU count)")
    grading.add_argument("--force", action="store_true", help="regrade graded students too")
    grading.add_argument(
        "--isolation",
        choices=("auto", "bubblewrap", "process"),
        default="auto",
        help="auto: bubblewrap where it can start, else (as root only) the process level",
    )
    grading.add_argument(
        "--accept-weak-isolation",
        action="store_true",
        help="allow the process level without root, where student code runs as your own user"
        " and can read and change your files and grades and kill the grader: only for code you"
        " trust",
    )
    grading.add_argument(
        "--time-limit",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="wall-clock and CPU seconds per call of a student function (10)",
    )
    grading.add_argument(
        "--memory-limit", type=float, default=4.0, metavar="GIB",
        help="memory a submission may allocate, in GiB (4)",
    )  # fmt: skip
    return main


def limits_of(args: argparse.Namespace) -> Limits:
    return Limits(
        call_wall_seconds=args.time_limit,
        call_cpu_seconds=args.time_limit,
        memory_bytes=int(args.memory_limit * 2**30),
    )


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def run_grade(args: argparse.Namespace) -> int:
    progress = Progress()
    out_dir = args.out or Path("grading") / args.assignment_id
    try:
        summary = grade(
            args.assignment_id,
            args.submitted_dir,
            out_dir,
            workers=args.workers,
            force=args.force,
            json_path=args.json_path,
            isolation=args.isolation,
            accept_weak=args.accept_weak_isolation,
            limits=limits_of(args),
            on_start=progress.start,
            on_record=progress.advance,
        )
    except Interrupted as stop:
        progress.finish()
        print(
            f"\ninterrupted: {stop.finished} submissions graded and saved, {stop.left} left; "
            "run the same command again to resume (graded students are skipped)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except SelfCheckFailed as error:
        progress.finish()
        print(f"error: {error}", file=sys.stderr)
        return EXIT_SELF_CHECK
    except GradingError as error:
        progress.finish()
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    progress.finish()
    print(format_summary(summary))
    if summary.grader_errors:
        print(
            f"error: the grader failed on {len(summary.grader_errors)} submissions, which have"
            " no score (see 'not graded' above and error_detail in their records); run the"
            " same command again to retry them",
            file=sys.stderr,
        )
        return EXIT_GRADER_ERRORS
    return 0


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.command == "grade":
        return run_grade(args)
    return EXIT_USAGE
