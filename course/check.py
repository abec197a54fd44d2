"""Check your exercises: `python -m course.check 2` (lesson 2), `2.1` (one exercise), or `all`.

    python -m course.check 1            # every exercise of lesson 1, in course/exercises/
    python -m course.check 2.1 3        # exercise 2.1 and lesson 3
    python -m course.check all --solutions   # the reference solutions (instructors, CI)
    python -m course.check 4.1 --time_limit=60   # allow a slow function more time (default 20 s)

Each exercise is a file in course/exercises/ with a function to write. The checker
loads your file, runs its tests and says in plain words what is wrong. It needs
nothing beyond the repository's requirements: no pytest, no network, no data.

Each exercise is checked in a process of its own, stopped after a time limit
(--time_limit, or the environment variable COURSE_CHECK_TIME_LIMIT), so that a loop
that never ends, in your function or at the top of your file, ends in a message
rather than a checker that hangs.
"""

import importlib.util
import multiprocessing
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

COURSE = Path(__file__).resolve().parent
EXERCISE_DIR = COURSE / "exercises"
SOLUTION_DIR = COURSE / "solutions"
DEFAULT_TIME_LIMIT = 20.0  # seconds per exercise; the reference solutions need well under one
GRACE = 5.0  # at most this many seconds past the limit before a child that ignores the alarm is killed
STARTUP = 120.0  # seconds a child may take to start (with spawn it imports torch and the checks first)


def all_exercises():
    from course.checks import lesson1, lesson2, lesson3, lesson4, lesson5, lesson6
    return [ex for lesson in (lesson1, lesson2, lesson3, lesson4, lesson5, lesson6) for ex in lesson.EXERCISES]


def select(exercises, ids):
    """The exercises named by `ids`: "all", a lesson ("2") or one exercise ("2.1")."""
    chosen = []
    for wanted in ids:
        found = [ex for ex in exercises if wanted == "all" or ex.id == wanted or ex.id.split(".")[0] == wanted]
        if not found:
            known = ", ".join(ex.id for ex in exercises)
            raise SystemExit(f"error: no exercise or lesson '{wanted}': choose a lesson number, one of {known}, or all")
        chosen += [ex for ex in found if ex not in chosen]
    return chosen


def load(path):
    """Import the file at `path` afresh (edits since the last run count)."""
    spec = importlib.util.spec_from_file_location(f"course_exercise_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _where(error, path):
    """'file:line' of the deepest frame of the traceback inside the student's file, or ''."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename).resolve() == path.resolve()]
    if not frames:
        return ""
    return f" (at {path.name} line {frames[-1].lineno}: {frames[-1].line.strip()})"


def _shown(path):
    """The path as a student types it: relative to the repository when inside it."""
    try:
        return path.resolve().relative_to(COURSE.parent)
    except ValueError:
        return path


def time_limit_from_environment():
    """The time limit in seconds: COURSE_CHECK_TIME_LIMIT if set, else DEFAULT_TIME_LIMIT."""
    value = os.environ.get("COURSE_CHECK_TIME_LIMIT", "")
    if not value:
        return DEFAULT_TIME_LIMIT
    return parse_time_limit(value, "COURSE_CHECK_TIME_LIMIT")


def parse_time_limit(value, name):
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise SystemExit(f"error: {name}={value!r} is not a time limit: give a number of seconds above 0, e.g. 20")
    return seconds


def _too_slow(limit, loading, where):
    if loading:
        return (f"importing your file did not finish within {limit:g} s: look for a loop that never ends "
                f"outside your function{where}")
    return f"your function did not return within {limit:g} s: look for a loop that never ends{where}"


class _TimeUp(BaseException):
    """Raised in the child when the time limit is reached (a BaseException, which `except Exception` lets by)."""


def _time_up(signum, frame):
    raise _TimeUp


def check_here(exercise, folder, limit=None):
    """(passed, message) for one exercise, in this process. With a limit (and SIGALRM, i.e. not on
    Windows) a pure-Python loop is interrupted after `limit` seconds and reported with its line."""
    from course.checks import Wrong

    path = Path(folder) / exercise.file
    alarm = limit is not None and hasattr(signal, "setitimer")
    if alarm:
        signal.signal(signal.SIGALRM, _time_up)
        signal.setitimer(signal.ITIMER_REAL, limit)
    loading = True
    try:
        module = load(path)
        loading = False
        message = exercise.check(module)
    except _TimeUp as e:
        return False, _too_slow(limit, loading, _where(e, path))
    except SyntaxError as e:
        if loading:
            return False, f"{path.name} does not parse: {e.msg} at line {e.lineno}"
        return False, f"your code raised SyntaxError: {e}{_where(e, path)}"
    except NotImplementedError as e:
        if loading:
            return False, f"importing {path.name} failed: NotImplementedError{_where(e, path)}"
        return False, f"not written yet: replace `raise NotImplementedError` in {_shown(path)} with your code"
    except Wrong as e:
        cause = e.__cause__
        return False, str(e) + (_where(cause, path) if cause is not None else "")
    except SystemExit as e:
        return False, f"your code called exit() (SystemExit: {e}): return the result instead"
    except Exception as e:  # noqa: BLE001 - the student's code crashed: say where, without a traceback
        if loading:
            return False, f"importing {path.name} failed: {type(e).__name__}: {e}{_where(e, path)}"
        return False, f"your code raised {type(e).__name__}: {e}{_where(e, path)}"
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
    return True, message or "all checks passed"


def _child(exercise, folder, limit, send):
    """The check in a child process: "ready" once it has started, then one (passed, message) pair,
    go back through `send`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        import torch
        torch.set_num_threads(1)  # the checks are tiny: one thread is faster, and safe after a fork
        import course.checks  # noqa: F401 - imported before the clock starts
        send.send("ready")
        result = check_here(exercise, folder, limit)
    except BaseException as e:  # noqa: BLE001 - whatever happens here becomes one line for the parent
        result = (False, f"the checker stopped: {type(e).__name__}: {e}")
    try:
        send.send(result)
    except Exception:  # noqa: BLE001 - a message that cannot be sent (e.g. not picklable) is said plainly
        send.send((False, f"the checker stopped: its result could not be passed back ({result[1]!r:.200})"))
    send.close()


def _context():
    """fork on Linux (fast: torch and the checks are already imported); spawn elsewhere, where fork is
    unsafe (macOS) or missing (Windows): each child then imports torch first, before its clock starts."""
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def run(exercise, folder=EXERCISE_DIR, time_limit=None):
    """(passed, message) for one exercise checked against the file in `folder`, in a child process
    that is stopped after `time_limit` seconds (default: time_limit_from_environment())."""
    path = Path(folder) / exercise.file
    if not path.is_file():
        return False, f"{path} is missing: copy it back from the course's exercises folder"
    limit = time_limit_from_environment() if time_limit is None else time_limit
    context = _context()
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(exercise, str(folder), limit, send), daemon=True)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main_thread else None
    try:
        child.start()  # the child starts with SIGINT ignored, so Ctrl-C never prints its traceback
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)
    send.close()
    result, started, ended = None, False, False
    try:
        if receive.poll(STARTUP):  # True at EOF too, when the child ended without a word
            first = receive.recv()
            started = first == "ready"
            result = None if started else first  # the child failed before it was ready
        if started and receive.poll(limit + min(GRACE, limit)):  # the clock ran from "ready": the import
            result = receive.recv()                                # of the student's file counts
    except EOFError:
        ended = True
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receive.close()
    if result is not None:
        return result
    if ended:
        return False, (f"the check ended without a result (exit code {child.exitcode}): your code, or something "
                       "it called, stopped the process")
    if not started:
        return False, f"the checker's process did not start within {STARTUP:g} s: is the machine very busy?"
    return False, _too_slow(limit, False, "")  # the child ignored the alarm (a loop in C code, or `except:`)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    solutions = "--solutions" in argv
    limits = [a for a in argv if a.startswith("--time_limit=")]
    ids = [a for a in argv if a != "--solutions" and a not in limits]
    unknown = [a for a in ids if a.startswith("-")]
    if unknown:
        raise SystemExit(f"error: unknown option '{unknown[0]}': give lesson or exercise numbers, "
                         "--solutions and --time_limit=SECONDS")
    limit = parse_time_limit(limits[-1].split("=", 1)[1], "--time_limit") if limits else time_limit_from_environment()
    chosen = select(all_exercises(), ids or ["all"])
    folder = SOLUTION_DIR if solutions else EXERCISE_DIR
    failed = 0
    for exercise in chosen:
        passed, message = run(exercise, folder, limit)
        failed += not passed
        print(f"[{'PASS' if passed else 'FAIL'}] {exercise.id} {exercise.title}: {message}", flush=True)
    print(f"{len(chosen) - failed} of {len(chosen)} passed")
    return 1 if failed else 0


def _command_line():
    try:
        return main()
    except KeyboardInterrupt:
        print("\ninterrupted: no more exercises checked", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(_command_line())
