"""`python -m digits_lightning COMMAND`: commands that need no torch run without importing it (a
small device may have only onnxruntime); every other command goes to the Lightning CLI."""

import atexit
import os
import sys
import threading

from digits_lightning.collector import libraries_loading

# command -> the module whose `main(args)` runs it, without torch
# (`serve` imports torch itself, and only to serve a checkpoint rather than an exported model.)
WITHOUT_TORCH: dict[str, str] = {"predict-onnx": "digits_lightning.predict_onnx", "serve": "digits_lightning.serve"}


def run() -> None:
    args = sys.argv[1:]
    try:
        with libraries_loading():  # a third of torch's and Lightning's import time is the collector's
            if args and args[0] in WITHOUT_TORCH:
                from importlib import import_module

                main = import_module(WITHOUT_TORCH[args[0]]).main
                args = args[1:]
            else:
                from digits_lightning.cli import main
        main(args)
    except SystemExit as stop:
        exit_now(stop.code)
    exit_now(0)


def exit_now(code: object) -> None:
    """End the process as Python's own exit would, less its teardown of every module: with torch
    and Lightning loaded that teardown takes about 0.7 s of each command (a quarter of `--help`) and
    frees nothing the system would not. The command's threads, exit handlers and output are
    finished first, as Python finishes them; an exception (our bug) never comes here and ends with
    its traceback and the usual teardown."""
    # What the interpreter's own exit runs first: the threading module's exit hooks (an idle
    # ThreadPoolExecutor's workers, e.g. torch.compile's, are told to stop; joined without them, they
    # wait forever), then a join of every thread that is not a daemon.
    threading._shutdown()
    atexit._run_exitfuncs()  # logging's flush, multiprocessing's children, ...: what exit would run
    if code is not None and not isinstance(code, int):  # SystemExit("message"): printed, status 1
        sys.stderr.write(f"{code}\n")
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or stream: nothing more to say
            pass
    os._exit(code or 0)


if __name__ == "__main__":
    run()
