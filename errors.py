"""
How nanoViT stops on bad input: one line naming the culprit, on stderr, and a non-zero exit code.
A traceback is for our bugs; a user's mistake deserves a sentence.
"""
import sys


def die(message, code=1):
    """Stop with one line on stderr (exit code 2: the command line or config was wrong; 1: the files were)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)
