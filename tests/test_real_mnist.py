"""A pipeline check on the real MNIST, where the environment says where it is (.ci/run sets
NANOVIT_MNIST_DIR when ../shared/mnist exists); skipped otherwise."""
import json
import os

import pytest

from conftest import REPO, run_script

MNIST_DIR = os.environ.get('NANOVIT_MNIST_DIR')


@pytest.mark.slow
@pytest.mark.skipif(not MNIST_DIR, reason='NANOVIT_MNIST_DIR is not set')
def test_small_vit_learns_real_mnist(tmp_path):
    # under a minute on two CPU cores: two thirds of an epoch of the speedrun's model and recipe
    result = run_script('train.py', os.path.join(REPO, 'config', 'mnist_speedrun.py'), f'--data_dir={MNIST_DIR}',
                        '--device=cpu', '--max_iters=300', '--eval_interval=300', '--log_interval=50',
                        '--out_dir=out', cwd=tmp_path, timeout=600, env={'OMP_NUM_THREADS': str(os.cpu_count())})
    assert result.returncode == 0, result.stderr
    assert 'data: mnist, 60000 train / 10000 test images' in result.stdout
    final = [json.loads(line) for line in open(tmp_path / 'out' / 'metrics.jsonl') if 'val_acc' in line][-1]
    assert final['val_acc'] >= 0.95, final  # measured 97.48% on a 2-core AMD EPYC (96.59% before test-time shifts)
