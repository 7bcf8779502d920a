"""What only a GPU can check; each test skips cleanly on a machine without CUDA."""
import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from conftest import TINY, run_script
from model import ViT, ViTConfig
from support.device import autocast, pick_dtype

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
GPU = [a for a in TINY if not a.startswith(('--device', '--dtype', '--compile'))] + ['--device=cuda']


@cuda
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
def test_sdpa_matches_plain_attention_on_gpu(dtype):
    torch.manual_seed(0)
    model = ViT(ViTConfig(n_layer=2, n_head=4, n_embd=128, pos_std=1.0)).cuda().eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)
    x = torch.randn(16, 1, 28, 28, device='cuda')
    with torch.autocast('cuda', dtype=dtype, enabled=dtype != torch.float32):
        fast, _ = model(x)
        with sdpa_kernel(SDPBackend.MATH):
            plain, _ = model(x)
    # relative to the size of the logits: bf16 keeps 8 bits of mantissa, fp16 11
    tolerance = {torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 4e-2}[dtype]
    error = (fast.float() - plain.float()).abs().max() / plain.float().abs().max()
    assert error < tolerance, error


@cuda
def test_the_picked_dtype_runs():
    dtype = pick_dtype('auto', 'cuda')[0]
    with autocast('cuda', dtype):
        y = torch.randn(64, 64, device='cuda') @ torch.randn(64, 64, device='cuda')
    assert y.dtype == getattr(torch, dtype)


@cuda
@pytest.mark.parametrize('dtype,compile,optimizer', [('auto', True, 'adamw'), ('float16', False, 'adamw'),
                                                     ('float32', False, 'adamw'), ('auto', True, 'muon')])
def test_trains_on_gpu_and_the_checkpoint_evaluates_on_cpu(dtype, compile, optimizer, synthetic_data, tmp_path):
    result = run_script('train.py', *GPU, f'--dtype={dtype}', f'--compile={compile}', f'--data_dir={synthetic_data}',
                        f'--optimizer={optimizer}',
                        '--pos_std=1.0', '--learning_rate=3e-3', '--warmup_iters=10', '--max_iters=200',
                        '--eval_interval=100', '--out_dir=out', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'device cuda' in result.stdout and ('compile on' in result.stdout) == compile, result.stdout
    evals = [json.loads(line) for line in open(tmp_path / 'out' / 'metrics.jsonl') if 'test_acc' in line]
    assert evals[-1]['test_acc'] >= 0.8, result.stdout
    checkpoint = torch.load(tmp_path / 'out' / 'ckpt.pt', map_location='cpu', weights_only=True)
    if dtype == 'float16':
        assert checkpoint['scaler']['scale'] > 0  # the GradScaler's state travels with the run
    cpu = run_script('sample.py', '--out_dir=out', '--device=cpu', cwd=tmp_path)
    assert cpu.returncode == 0, cpu.stderr
    accuracy = float(cpu.stdout.split('test accuracy: ')[1].split('%')[0]) / 100
    assert abs(accuracy - evals[-1]['test_acc']) <= 0.02, (cpu.stdout, evals)


@cuda
def test_bench_on_gpu(tmp_path):
    result = run_script('bench.py', '--device=cuda', '--n_layer=1', '--n_embd=64', '--n_head=2', '--batch_size=16',
                        '--bench_warmup=3', '--bench_iters=5', '--bench_out=b.json', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / 'b.json').read_text())
    assert all(r['peak_memory_mib'] > 0 for r in report['rows'])
    assert {r['mode'] for r in report['rows']} == {'eager', 'compiled'}
