"""support/device.py: the dtype each device gets, by its hardware (GPUs faked by their compute capability)."""
import pytest

from support.device import native_dtypes, pick_dtype


def test_dtype_rule_by_capability():
    # the rule itself, and that bench.py times what dtype='auto' would pick first
    assert pick_dtype('auto', 'cuda', capability=(7, 5)) == \
        ('float16', 'sm75 has fp16 tensor cores but no native bf16 (GradScaler on)')  # T4
    assert pick_dtype('auto', 'cuda', capability=(7, 0))[0] == 'float16'  # V100
    assert pick_dtype('auto', 'cuda', capability=(8, 0))[0] == 'bfloat16'  # A100
    assert pick_dtype('auto', 'cuda', capability=(9, 0))[0] == 'bfloat16'  # H100
    assert pick_dtype('auto', 'cuda', capability=(6, 1))[0] == 'float32'  # Pascal
    assert pick_dtype('auto', 'cpu', native_cpu_bf16=False)[0] == 'float32'
    assert pick_dtype('auto', 'cpu', native_cpu_bf16=True)[0] == 'bfloat16'
    assert pick_dtype('float32', 'cuda', capability=(9, 0))[0] == 'float32'
    assert pick_dtype('bfloat16', 'cpu', native_cpu_bf16=False)[0] == 'bfloat16'
    assert pick_dtype('float16', 'cpu')[1].startswith('as requested; slow on a CPU')  # a T4's path, on a CPU
    with pytest.raises(SystemExit):
        pick_dtype('fp8', 'cuda')
    assert [d for d, _ in native_dtypes('cuda', capability=(9, 0))] == ['bfloat16', 'float16', 'float32']
    assert [d for d, _ in native_dtypes('cpu', native_cpu_bf16=False)] == ['float32']
