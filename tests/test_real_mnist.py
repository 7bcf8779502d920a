"""A pipeline check on the real MNIST, where the environment says where it is (.ci/run sets
NANOVIT_MNIST_DIR when ../shared/mnist exists); skipped otherwise."""
import json
import os

import pytest

from conftest import run_script

MNIST_DIR = os.environ.get('NANOVIT_MNIST_DIR')


@pytest.mark.skipif(not MNIST_DIR, reason='NANOVIT_MNIST_DIR is not set')
def test_small_vit_learns_real_mnist(tmp_path):
    # about a minute on two CPU cores: one epoch of a 4-layer, 96-wide ViT on 7x7 patches
    result = run_script('train.py', f'--data_dir={MNIST_DIR}', '--device=cpu', '--dtype=float32', '--compile=False',
                        '--n_layer=4', '--n_head=4', '--n_embd=96', '--patch_size=7', '--batch_size=128',
                        '--max_iters=470', '--warmup_iters=50', '--learning_rate=2e-3', '--pool=mean',
                        '--eval_interval=470', '--log_interval=50', '--plot=False', '--out_dir=out',
                        cwd=tmp_path, timeout=600, env={'OMP_NUM_THREADS': str(os.cpu_count())})
    assert result.returncode == 0, result.stderr
    assert 'data: 60000 train / 10000 test images' in result.stdout
    final = [json.loads(line) for line in open(tmp_path / 'out' / 'metrics.jsonl') if 'val_acc' in line][-1]
    assert final['val_acc'] >= 0.85, final
