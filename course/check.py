"""Check your exercises: `python -m course.check 2` (lesson 2), `2.1` (one exercise), or `all`.

    python -m course.check 1            # every exercise of lesson 1, in course/exercises/
    python -m course.check 2.1 3        # exercise 2.1 and lesson 3
    python -m course.check all --solutions   # the reference solutions (instructors, CI)

Each exercise is a file in course/exercises/ with a function to write. The checker
loads your file, runs its tests and says in plain words what is wrong. It needs
nothing beyond the repository's requirements: no pytest, no network, no data.
"""

import importlib.util
import sys
import traceback
from pathlib import Path

from course.checks import Wrong

COURSE = Path(__file__).resolve().parent
EXERCISE_DIR = COURSE / "exercises"
SOLUTION_DIR = COURSE / "solutions"


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


def run(exercise, folder=EXERCISE_DIR):
    """(passed, message) for one exercise checked against the file in `folder`."""
    path = Path(folder) / exercise.file
    if not path.is_file():
        return False, f"{path} is missing: copy it back from the course's exercises folder"
    try:
        module = load(path)
    except SyntaxError as e:
        return False, f"{path.name} does not parse: {e.msg} at line {e.lineno}"
    except Exception as e:  # noqa: BLE001 - any import error is the student's to fix
        return False, f"importing {path.name} failed: {type(e).__name__}: {e}{_where(e, path)}"
    try:
        message = exercise.check(module)
    except NotImplementedError:
        return False, (f"not written yet: replace `raise NotImplementedError` in {path.relative_to(COURSE.parent)} "
                       "with your code")
    except Wrong as e:
        return False, str(e)
    except Exception as e:  # noqa: BLE001 - the student's code crashed: say where, without a traceback
        return False, f"your code raised {type(e).__name__}: {e}{_where(e, path)}"
    return True, message or "all checks passed"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    solutions = "--solutions" in argv
    ids = [a for a in argv if a != "--solutions"]
    unknown = [a for a in ids if a.startswith("-")]
    if unknown:
        raise SystemExit(f"error: unknown option '{unknown[0]}': give lesson or exercise numbers, and --solutions")
    chosen = select(all_exercises(), ids or ["all"])
    folder = SOLUTION_DIR if solutions else EXERCISE_DIR
    failed = 0
    for exercise in chosen:
        passed, message = run(exercise, folder)
        failed += not passed
        print(f"[{'PASS' if passed else 'FAIL'}] {exercise.id} {exercise.title}: {message}")
    print(f"{len(chosen) - failed} of {len(chosen)} passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
