"""colab.ipynb: a valid notebook whose commands are README's commands, so the two cannot drift apart."""
import json
import os
import re
import sys


from conftest import REPO


def notebook_commands():
    with open(os.path.join(REPO, 'colab.ipynb')) as f:
        notebook = json.load(f)
    assert notebook['nbformat'] == 4
    lines = []
    for cell in notebook['cells']:
        assert cell['cell_type'] in ('markdown', 'code')
        if cell['cell_type'] == 'code':
            assert cell['outputs'] == [] and cell['execution_count'] is None  # committed clean
            lines += [line.strip() for line in cell['source']]
    return [line[1:] for line in lines if line.startswith('!python') or line.startswith('!pip')]


def test_the_notebook_runs_readme_s_commands():
    with open(os.path.join(REPO, 'README.md')) as f:
        readme = f.read()
    commands = notebook_commands()
    assert len(commands) >= 8
    for command in commands:
        assert command in readme, f"colab.ipynb runs `{command}`, which README.md does not show"


def test_the_notebook_s_scripts_and_configs_exist():
    for command in notebook_commands():
        for path in re.findall(r'\b[\w/]+\.(?:py|txt)\b', command):
            assert os.path.isfile(os.path.join(REPO, path)), f"colab.ipynb names {path}, which is not in the repository"


def test_the_notebook_s_train_py_commands_are_valid_configs(run_here, tmp_path, monkeypatch):
    # each train.py command of the notebook, up to the end of its configuration: the files exist, every key is
    # known and of its type, and the values pass train.py's checks (the run stops where it would claim its out_dir)
    commands = [c.split()[2:] for c in notebook_commands() if c.startswith('python train.py')]
    assert commands
    for args in commands:
        monkeypatch.setattr('support.safety.claim_out_dir', lambda *a, **k: sys.exit(0))
        result = run_here('train.py', *[a if a.startswith('--') else os.path.join(REPO, a) for a in args],
                          f'--out_dir={tmp_path / "never"}', '--device=cpu', '--data_dir=no-data-here', cwd=tmp_path)
        assert result.returncode == 0 and result.stderr == '', (args, result.stderr)
