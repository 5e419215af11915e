"""Work done by the image's own Python 3.11 (run on the build host), never imported by the build.

Running the target interpreter rather than the host's gives its exact builtin modules and
bytecode. Reads a JSON job on stdin, writes a JSON answer on stdout:
  {"find": {"path": [...], "modules": [...]}} -> {"files": {module: file}}: every module that
      importing `modules` loads (builtins and frozen modules left out)
  {"compile": [[source, destination, name_in_tracebacks], ...]} -> {"compiled": count}
"""

import json
import sys


def find(path: list[str], modules: list[str]) -> dict[str, str]:
    # Importing, not modulefinder: its static closure of ctypes and dataclasses drags in
    # asyncio, pdb and most of the stdlib, five times what the appliance loads.
    sys.path[:] = path
    for name in modules:
        __import__(name)
    found = {name: getattr(module, "__file__", None) for name, module in sys.modules.items()}
    return {name: file for name, file in sorted(found.items()) if file}


def compile_all(jobs: list[list[str]]) -> int:
    import py_compile  # here, so that `find` does not count it as the appliance's

    # optimize=2 (what -OO writes) leaves out docstrings and asserts: the bytecode is 17 % smaller
    # and the code objects in memory 0.5 MiB. The image's .pyc are sourceless, so the interpreter
    # loads them whatever its own -O level. The appliance's asserts only narrow types for mypy.
    for source, destination, shown in jobs:
        py_compile.compile(
            source,
            destination,
            dfile=shown,
            doraise=True,
            optimize=2,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
    return len(jobs)


def main() -> None:
    job = json.load(sys.stdin)
    if "find" in job:
        answer: dict[str, object] = {"files": find(**job["find"])}
    else:
        answer = {"compiled": compile_all(job["compile"])}
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
