import json

from PIL import Image




def fake_run(folder, final_acc):
    folder.mkdir()
    records = [{'iter': i, 'loss': 2.0 / i, 'lr': 1e-3, 'ms': 5.0} for i in range(1, 11)]
    records += [{'iter': 5, 'train_loss': 0.5, 'val_loss': 0.4, 'val_acc': 0.8},
                {'iter': 10, 'train_loss': 0.2, 'val_loss': 0.3, 'val_acc': final_acc}]
    (folder / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))


def test_overlay_of_several_runs(tmp_path, run_here):
    fake_run(tmp_path / 'a', 0.9)
    fake_run(tmp_path / 'b', 0.95)
    result = run_here('plot.py', 'a', 'b', '--out=cmp.png', '--labels=first,second', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / 'cmp.png') as image:
        assert image.size[0] > 500 and image.size[1] > 200


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
