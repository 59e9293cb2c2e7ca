"""`python -m digits_lightning COMMAND`: commands that need no torch run without importing it (a
small device may have only onnxruntime); every other command goes to the Lightning CLI."""

import sys

# command -> the module whose `main(args)` runs it, without torch
# (`serve` imports torch itself, and only to serve a checkpoint rather than an exported model.)
WITHOUT_TORCH: dict[str, str] = {"predict-onnx": "digits_lightning.predict_onnx", "serve": "digits_lightning.serve"}


def run() -> None:
    args = sys.argv[1:]
    if args and args[0] in WITHOUT_TORCH:
        from importlib import import_module

        import_module(WITHOUT_TORCH[args[0]]).main(args[1:])
        return
    from digits_lightning.cli import main

    main(args)


run()
