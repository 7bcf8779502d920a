"""plot.py: the curves of one run or several, from their metrics.jsonl."""
import json

import numpy as np
from PIL import Image

from conftest import assert_one_line_error


def fake_run(folder, final_acc, val=False):
    folder.mkdir()
    records = [{'iter': i, 'loss': 2.0 / i, 'lr': 1e-3, 'ms': 5.0} for i in range(1, 11)]
    held_out = lambda acc: {'val_loss': 0.5, 'val_acc': acc - 0.1} if val else {}  # noqa: E731
    records += [{'iter': 5, 'train_loss': 0.5, 'test_loss': 0.4, 'test_acc': 0.8, **held_out(0.8)},
                {'iter': 10, 'train_loss': 0.2, 'test_loss': 0.3, 'test_acc': final_acc, **held_out(final_acc)}]
    (folder / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))


def coloured(path, colour):
    """How many pixels of the figure at path are drawn in matplotlib's colour colour (C0, C1, ...)."""
    import matplotlib.colors
    rgb = np.array(matplotlib.colors.to_rgb(colour)) * 255
    with Image.open(path) as figure:
        pixels = np.asarray(figure.convert('RGB')).astype(float)
    return int((np.abs(pixels - rgb).sum(axis=2) < 30).sum())


def test_overlay_of_several_runs(tmp_path, run_here):
    fake_run(tmp_path / 'a', 0.9)
    fake_run(tmp_path / 'b', 0.95)
    result = run_here('plot.py', 'a', '--out=one.png', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = run_here('plot.py', 'a', 'b', '--out=cmp.png', '--labels=first,second', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # the second run is drawn in its own colour, which the figure of the first run alone does not hold
    assert coloured(tmp_path / 'cmp.png', 'C1') > 500 and coloured(tmp_path / 'one.png', 'C1') < 50
    assert coloured(tmp_path / 'cmp.png', 'C0') > 500


def test_a_held_out_split_is_drawn_beside_the_test_split(tmp_path, run_here):
    fake_run(tmp_path / 'a', 0.9)
    fake_run(tmp_path / 'b', 0.9, val=True)
    for run in ('a', 'b'):
        assert run_here('plot.py', run, cwd=tmp_path).returncode == 0
    # the validation curves add lines of the run's colour: more of it is drawn
    assert coloured(tmp_path / 'b' / 'curves.png', 'C0') > coloured(tmp_path / 'a' / 'curves.png', 'C0') + 200


def test_plot_names_a_folder_without_metrics(tmp_path, run_here):
    fake_run(tmp_path / 'a', 0.9)
    result = run_here('plot.py', "a", "missing", cwd=tmp_path)
    assert result.returncode != 0 and 'no metrics.jsonl in missing' in result.stderr
    result = run_here('plot.py', 'a', '--labels=x,y', cwd=tmp_path)
    assert result.returncode != 0 and '2 labels for 1 runs' in result.stderr


def test_one_run_is_drawn_into_its_own_folder(tmp_path, run_here):
    fake_run(tmp_path / 'a', 0.9)
    (tmp_path / 'a' / 'metrics.jsonl').write_text((tmp_path / 'a' / 'metrics.jsonl').read_text() + '{"iter": 11, "lo')
    result = run_here('plot.py', 'a', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'ends in a half-written line' in result.stdout  # a run killed mid-write still plots
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a'] and (tmp_path / 'a' / 'curves.png').exists()


def test_plot_py_to_a_format_it_cannot_write(tmp_path, run_here):
    (tmp_path / 'a').mkdir()
    (tmp_path / 'a' / 'metrics.jsonl').write_text(json.dumps({'iter': 1, 'loss': 1.0, 'lr': 1e-3, 'ms': 1.0}) + '\n')
    result = run_here('plot.py', 'a', '--out=x.xyz', cwd=tmp_path)
    assert_one_line_error(result, "could not write x.xyz: Format 'xyz' is not supported")
