"""colab.ipynb: a valid notebook whose commands are README's commands, so the two cannot drift apart."""
import json
import os
import re
import shutil
import sys

import torch


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


def code_cells():
    with open(os.path.join(REPO, 'colab.ipynb')) as f:
        return [''.join(c['source']) for c in json.load(f)['cells'] if c['cell_type'] == 'code']


def as_python(cell):
    """A notebook cell as IPython runs it: a line starting with ! is a shell command, one with % a magic."""
    lines = []
    for line in cell.splitlines():
        code = line.lstrip()
        indent = line[:len(line) - len(code)]
        if code.startswith('!'):
            lines.append(f"{indent}get_ipython().system({code[1:]!r})")
        elif code.startswith('%'):
            lines.append(f"{indent}get_ipython().run_line_magic({code[1:]!r})")
        else:
            lines.append(line)
    return '\n'.join(lines)


def test_every_code_cell_is_valid_python():
    for cell in code_cells():
        compile(as_python(cell), 'cell', 'exec')  # a SyntaxError names the cell's line


def test_the_resume_cell_carries_on_a_cut_run_and_leaves_a_finished_one(trained_run, tmp_path):
    # under "Run all" the run before it has finished: resuming then would stop with "already at max_iters"
    cell = next(c for c in code_cells() if '--init_from=resume' in c)
    shutil.copytree(trained_run.out, tmp_path / 'out-cifar10')
    ckpt = tmp_path / 'out-cifar10' / 'ckpt.pt'
    for iter_num, resumed in ((200, False), (120, True)):
        checkpoint = torch.load(ckpt, weights_only=True)
        checkpoint['iter_num'] = iter_num  # 120: the run was cut off at its iteration 120 of 200
        torch.save(checkpoint, ckpt)
        commands = []

        class Kernel:
            def system(self, command):
                commands.append(command)
        exec(as_python(cell), {'OUT': str(tmp_path), 'get_ipython': Kernel})
        assert bool(commands) == resumed and all('--init_from=resume' in c for c in commands)
