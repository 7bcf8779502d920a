"""
Poor Man's Configurator, after nanoGPT's. It is exec'd by train.py (and bench.py, sample.py, prepare.py), which first
list their settings' names in config_keys:
    python train.py config/mnist.py --batch_size=64 --compile=False
Bare arguments are config files, executed in order; --key=value arguments override single keys.
A key must be one of config_keys, and a value must have the type of its default (an int is fine for a
float). Anything else stops the script with one line and exit code 2. Config files are Python: they may
import and compute, and names starting with _ are their own.
"""
import builtins
import os
import sys
import traceback
import types
from ast import literal_eval
from difflib import get_close_matches

def _config_error(message):
    print(f"config error: {message}", file=sys.stderr)
    sys.exit(2)

def _checked(key, value, source):
    """value converted to the type of the key's default, or a config error naming both (or the key, unknown)."""
    if key not in config_keys:
        close = get_close_matches(key, config_keys, n=1)
        _config_error(f"{source}: unknown config key {key!r}" + (f"; did you mean {close[0]}?" if close else ""))
    default = globals()[key]
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)  # an int, or numpy's float64 from a config file's arithmetic
    if type(value) is type(default):
        return value
    _config_error(f"{source}: {key} must be {type(default).__name__} (default {default!r}), got {value!r}")

def _run_config_file(path):
    """The names a config file defines, or a config error with the file and line where it went wrong."""
    namespace = {}
    try:
        with open(path, encoding='utf-8') as f:
            source = f.read()
    except UnicodeDecodeError as e:
        _config_error(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); save it as UTF-8")
    except OSError as e:
        _config_error(f"cannot read the config file {path}: {e.strerror}")
    try:
        # builtins.compile: the scripts' own `compile` key hides the built-in
        exec(builtins.compile(source, path, 'exec'), namespace)
    except SyntaxError as e:
        _config_error(f"{path}, line {e.lineno}: SyntaxError: {e.msg}")
    except Exception as e:
        lines = [frame.lineno for frame in traceback.extract_tb(e.__traceback__) if frame.filename == path]
        _config_error(f"{path}{f', line {lines[-1]}' if lines else ''}: {type(e).__name__}: {e}")
    # imports and helper functions are the file's tools, not config values
    return {k: v for k, v in namespace.items() if not k.startswith('_')
            and not isinstance(v, (types.ModuleType, types.FunctionType, type))}

for _arg in sys.argv[1:]:
    if not _arg.startswith('--'):
        if not os.path.isfile(_arg):
            _config_error(f"config file not found: {_arg}")
        print(f"Overriding config with {_arg}")
        for _key, _value in _run_config_file(_arg).items():
            globals()[_key] = _checked(_key, _value, _arg)
    else:
        if '=' not in _arg:
            _config_error(f"{_arg}: overrides are written --key=value")
        _key, _text = _arg[2:].split('=', 1)
        try:  # a string key takes the text as it is: --out_dir=2024 is a folder, not a number
            _value = _text if isinstance(globals().get(_key), str) else literal_eval(_text)
        except (SyntaxError, ValueError, TypeError):  # TypeError: {[]: 1}
            _value = _text  # a bare word is a string: --device=cpu
        globals()[_key] = _checked(_key, _value, _arg)
        print(f"Overriding: {_key} = {globals()[_key]!r}")
flags = {a[2:].split('=')[0] for a in sys.argv[1:] if a.startswith('--')}  # the keys the command line sets by name
