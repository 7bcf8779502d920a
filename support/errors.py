"""
How nanoViT stops on bad input: one line naming the culprit, on stderr, and a non-zero exit code.
A traceback is for our bugs; a user's mistake deserves a sentence.
"""
import os
import sys

# a file or class name that is not UTF-8 prints escaped (\udce9) rather than crashing the print
for stream in (sys.stdout, sys.stderr):
    if hasattr(stream, 'reconfigure'):  # a notebook's streams have no encoding to set
        stream.reconfigure(errors='backslashreplace')

def die(message, code=1):
    """Stop with one line on stderr (exit code 2: the command line or config was wrong; 1: the files were).
    Under torchrun every process reads the same config and data, so process 0 alone says it."""
    if os.environ.get('RANK', '0') == '0':
        print(f"error: {message}", file=sys.stderr)
    sys.exit(code)

def quiet_when_a_peer_stops(exc_type, exc, tb):
    """sys.excepthook for the other processes of a torchrun run: when one process stops (with its one line),
    the others' collectives fail with the connection gone; their tracebacks would bury that line."""
    import torch.distributed as dist
    if isinstance(exc, dist.DistError) or isinstance(exc, RuntimeError) and 'Connection closed by peer' in str(exc):
        os._exit(1)
    sys.__excepthook__(exc_type, exc, tb)

def note(message):
    """Say something worth knowing that does not stop the run, once (process 0 under torchrun)."""
    if os.environ.get('RANK', '0') == '0':
        print(f"note: {message}")

def first_line(e):
    """An exception in one line, for a message that names it: its type and its message's first line, cut at 200."""
    return type(e).__name__ + ': ' + str(e).strip().partition('\n')[0][:200]

def import_or_die(package, asked_by):
    """An optional package (timm, wandb), imported when a run asks for it; one line when it is not installed."""
    import importlib
    try:
        return importlib.import_module(package)
    except ImportError as e:
        die(f"{asked_by} needs {package}, which is not installed ({e}): pip install {package}", 2)
