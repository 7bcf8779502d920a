"""
Does starting from pretrained weights pay, with the data we have? Pretrain the CPU CIFAR-10 ViT of 2026-12-02 on
five CIFAR-10 classes, then fine-tune it on the other five with 100 pictures a class, next to the same
model trained from scratch on those 500 pictures for the same steps and seeds, and the fine-tuning knobs
one at a time. The two datasets are folders of links into a CIFAR-10 folder dataset, made in out_dir; every
run is a plain `python train.py`, so each can be rerun (or resumed) by hand.
$ python records/transfer.py --data_dir=/path/to/cifar10
Prints a table (final test accuracy on the other five classes' 5000 test pictures) and writes it to out_dir.
"""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # the repository's modules, as for a script at its root
from support.errors import die  # noqa: E402

# -----------------------------------------------------------------------------
data_dir = ''  # a CIFAR-10 folder dataset: train/<class>/*, test/<class>/* (required)
out_dir = 'out-transfer'
pretrain_classes = 'airplane,automobile,bird,cat,deer'  # the rest of the ten are the fine-tuning task
per_class = 100  # fine-tuning pictures of each class
pretrain_iters = 2000  # 10 epochs of the 25,000 pictures at batch 128
finetune_iters = 300  # 19 epochs of the 500 pictures at batch 32
seeds = '1337,2,3'
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
exec(open(os.path.join(REPO, 'configurator.py')).read())
# -----------------------------------------------------------------------------
if not data_dir:
    die("give the CIFAR-10 folder dataset: --data_dir=/path/to/cifar10 (train/<class>/*, test/<class>/*)", 2)
TRAIN = os.path.join(REPO, 'train.py')
CONFIG = os.path.join(REPO, 'records', 'recipes', 'cifar10_cpu_2026-12-02.py')  # the recipe its table was made with
SMALL_DATA = ['--batch_size=32', f'--max_iters={finetune_iters}', f'--eval_interval={finetune_iters}',
              '--log_interval=100', '--warmup_iters=30', '--tta_shift=0']
# what each row changes, on top of the fine-tuning defaults below; 'scratch' starts from random weights
RUNS = {
    'from scratch, AdamW lr 1e-3': ['--init_from=scratch', '--optimizer=adamw', '--learning_rate=1e-3'],
    'from scratch, Muon 0.02 + AdamW 2e-3 (the pretraining recipe)': ['--init_from=scratch', '--optimizer=muon',
                                                                       '--learning_rate=2e-3'],
    'fine-tuned, AdamW lr 1e-3': ['--learning_rate=1e-3'],
    'fine-tuned, AdamW lr 3e-4': [],
    'fine-tuned, AdamW lr 1e-4': ['--learning_rate=1e-4'],
    'fine-tuned, AdamW lr 3e-4, layer_decay 0.75': ['--layer_decay=0.75'],
    'fine-tuned, AdamW lr 3e-4, layer_decay 0.5': ['--layer_decay=0.5'],
    'fine-tuned, linear probe (head only, lr 1e-2)': ['--linear_probe=True', '--learning_rate=1e-2'],
    'fine-tuned, Muon 0.02 + AdamW 3e-4': ['--optimizer=muon'],
}
FINETUNE = ['--optimizer=adamw', '--learning_rate=3e-4', '--min_lr=1e-6', '--weight_decay=0.05']


def link_folder(root, classes, n):
    """root/train/<class> holding links to the first n training pictures of each class (all when n is 0),
    root/test/<class> to all its test pictures."""
    for split, count in (('train', n), ('test', 0)):
        for c in classes:
            source = os.path.join(os.path.abspath(os.path.expanduser(data_dir)), split, c)
            if not os.path.isdir(source):
                die(f"data_dir={data_dir!r} has no {split}/{c}: point it at a CIFAR-10 folder dataset", 2)
            target = os.path.join(root, split, c)
            os.makedirs(target, exist_ok=True)
            for name in sorted(os.listdir(source))[:count or None]:
                if not os.path.lexists(os.path.join(target, name)):
                    os.symlink(os.path.join(source, name), os.path.join(target, name))
    return root


def train(name, *args):
    """Run train.py into out_dir/name (carried on if it was stopped, skipped if it finished); its final test accuracy."""
    run = os.path.join(out_dir, name)
    ckpt = os.path.join(run, 'ckpt.pt')
    if not finished(ckpt):
        command = [sys.executable, TRAIN, CONFIG, *args, f'--out_dir={run}', '--plot=False']
        command += ['--init_from=resume'] if os.path.exists(ckpt) else []
        print(f"$ {' '.join(command[1:])}", flush=True)
        if subprocess.run(command, stdout=subprocess.DEVNULL).returncode != 0:
            die(f"the run in {run} failed (its command is above)")
    return [json.loads(line) for line in open(os.path.join(run, 'metrics.jsonl')) if 'test_acc' in line][-1]['test_acc']


def finished(ckpt):
    import torch
    if not os.path.exists(ckpt):
        return False
    checkpoint = torch.load(ckpt, map_location='cpu', weights_only=True)
    return checkpoint['iter_num'] == checkpoint['config']['max_iters']


classes = sorted(os.listdir(os.path.join(os.path.expanduser(data_dir), 'train')))
first = pretrain_classes.split(',')
rest = [c for c in classes if c not in first]
pretrain_data = link_folder(os.path.join(out_dir, 'data-pretrain'), first, 0)
small_data = link_folder(os.path.join(out_dir, f'data-{per_class}'), rest, per_class)
pretrained_acc = train('pretrain', '--dataset=folder', f'--data_dir={pretrain_data}', f'--max_iters={pretrain_iters}',
                       f'--eval_interval={pretrain_iters}', '--tta_shift=0')
print(f"pretrained on {', '.join(first)}: {100 * pretrained_acc:.2f}% on their test pictures")
table = {}
for row, args in RUNS.items():
    start = [] if '--init_from=scratch' in args else [f"--init_from={os.path.join(out_dir, 'pretrain')}"]
    accs = [train(f"{row.replace(' ', '_').replace(',', '')}-{seed}", '--dataset=folder', f'--data_dir={small_data}',
                  *SMALL_DATA, *FINETUNE, *start, *args, f'--seed={seed}') for seed in seeds.split(',')]
    table[row] = accs
    print(f"| {row} | {' / '.join(f'{100 * a:.2f}%' for a in accs)} | {100 * sum(accs) / len(accs):.2f}% |", flush=True)
with open(os.path.join(out_dir, 'transfer.json'), 'w') as f:
    json.dump(dict(pretrained_on=first, finetuned_on=rest, per_class=per_class, pretrain_iters=pretrain_iters,
                   pretrain_acc=pretrained_acc, finetune_iters=finetune_iters, seeds=seeds, accuracy=table), f, indent=2)
print(f"wrote {os.path.join(out_dir, 'transfer.json')}")
