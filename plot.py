"""
Training curves from the metrics.jsonl that train.py writes to each out_dir.
One run (train.py calls this at every evaluation), drawn into out-mnist/curves.png:
$ python plot.py out-mnist
Several runs overlaid on one figure, for comparisons: yours over a record's (records/runs/ hold their metrics)
$ python plot.py out-mine records/runs/cifar10_cpu-fp32-avx2-2026-12-07 --out=compare.png --labels="mine,the record"
"""
import os
import sys

import matplotlib
import matplotlib.pyplot as plt

from support.errors import die, note
from support.runlog import machine, read_metrics

def plot_runs(out_dirs, path, labels=None):
    """Train loss, then the loss and accuracy of every evaluated split (val, when a run holds one out, and test)
    against iteration, one colour per run, one line style per split."""
    matplotlib.use('Agg')  # headless: no display needed (Colab, servers, CI)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for i, out_dir in enumerate(out_dirs):
        records = read_metrics(os.path.join(out_dir, 'metrics.jsonl'))
        logs = [r for r in records if 'loss' in r]
        name = os.path.basename(os.path.normpath(out_dir))
        where = machine(os.path.join(out_dir, 'run.json'))  # the run's hardware, from the record it keeps
        label = (labels[i] if labels else name) + (f" ({where})" if where and len(out_dirs) > 1 else '')
        if where and len(out_dirs) == 1:
            fig.suptitle(f"{name}: {where}", fontsize=9)
        color = f"C{i}"
        ax_loss.plot([r['iter'] for r in logs], [r['loss'] for r in logs], color=color, alpha=0.5,
                     label=f"{label} train")
        for split, style in (('val', 'o--'), ('test', 'o-')):
            evals = [r for r in records if f'{split}_acc' in r]
            if evals:
                ax_loss.plot([r['iter'] for r in evals], [r[f'{split}_loss'] for r in evals], style, color=color,
                             label=f"{label} {split}")
                ax_acc.plot([r['iter'] for r in evals], [100 * r[f'{split}_acc'] for r in evals], style, color=color,
                            label=f"{label} {split} ({100 * evals[-1][f'{split}_acc']:.2f}%)")
    ax_loss.set(xlabel='iteration', ylabel='cross-entropy loss', yscale='log', title='loss')
    ax_acc.set(xlabel='iteration', ylabel='accuracy (%)', title='accuracy (whole splits)')
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)

def redraw(out_dir):
    """out_dir/curves.png drawn anew (train.py, at every evaluation). A figure is not worth a run: a disk that
    refuses it is a note, and training goes on (the checkpoint and the metrics are written)."""
    path = os.path.join(out_dir, 'curves.png')
    try:
        plot_runs([out_dir], path)
    except OSError as e:
        note(f"could not draw {path} ({e.strerror or e}); training goes on")

if __name__ == '__main__':
    options = dict(a[2:].split('=', 1) for a in sys.argv[1:] if a.startswith('--') and '=' in a)
    args = [a for a in sys.argv[1:] if not a.startswith('--')]
    if not args or not options.keys() <= {'out', 'labels'}:
        sys.exit("usage: python plot.py OUT_DIR [OUT_DIR ...] [--out=name.png] [--labels=a,b,...]")
    labels = options['labels'].split(',') if 'labels' in options else None
    if labels and len(labels) != len(args):
        die(f"{len(labels)} labels for {len(args)} runs")
    for out_dir in args:
        if not os.path.isfile(os.path.join(out_dir, 'metrics.jsonl')):
            die(f"no metrics.jsonl in {out_dir} (is it a train.py out_dir?)")
    path = options.get('out', os.path.join(args[0], 'curves.png'))
    try:
        plot_runs(args, path, labels)
    except (OSError, ValueError) as e:  # a folder that cannot be written, a format matplotlib does not know
        die(f"could not write {path}: {e.strerror if isinstance(e, OSError) and e.strerror else e}")
    print(f"wrote {path}")
