"""Fine-tuning (support/pretrained.py): a torchvision ViT (random weights in torchvision's cache: nothing is fetched
here) or another nanoViT run as the start, through the code path train.py's init_from takes."""
import os
import shutil
import signal
import sys
from dataclasses import asdict

import pytest
import torch

from conftest import TINY, assert_one_line_error, losses, make_picture_folder, run_script, start_script, wait_for_line
from model import ViT, ViTConfig, resample_pos_embd
from support.pretrained import from_source

OFFLINE = {'http_proxy': 'http://127.0.0.1:9', 'https_proxy': 'http://127.0.0.1:9'}  # every fetch fails at once
BASE = [a for a in TINY if not a.startswith('--batch_size')] + ['--batch_size=16', '--log_interval=1', '--learning_rate=1e-3']


def a_config(**changes):
    """The keys of a run's config that a fine-tuning start reads, at train.py's defaults."""
    return dict(asdict(ViTConfig()), img_size=0, store_size=0, dataset='mnist', data_dir='data', val_size=0) | changes


def model_from(start, classes):
    model = ViT(start.settle(None, classes)).eval()
    start.load_weights(model, classes)
    return model


@pytest.fixture(scope='module')
def torch_home(tmp_path_factory):
    """A TORCH_HOME whose cache holds random weights under the file name of torchvision's ViT-B/16 ImageNet weights,
    and the torchvision model they came from."""
    import torchvision
    home = tmp_path_factory.mktemp('torch_home')
    torch.manual_seed(0)
    reference = torchvision.models.vit_b_16(weights=None).eval()
    torch.nn.init.normal_(reference.heads.head.weight, std=0.02)  # torchvision's head starts at zero
    os.makedirs(home / 'hub' / 'checkpoints')
    torch.save(reference.state_dict(), home / 'hub' / 'checkpoints' / 'vit_b_16-c867db91.pth')
    return home, reference


def test_torchvision_vit_b_16_imports_with_the_same_logits(torch_home, monkeypatch):
    home, reference = torch_home
    monkeypatch.setenv('TORCH_HOME', str(home))
    monkeypatch.setenv('http_proxy', OFFLINE['http_proxy'])  # what is in the cache is read, nothing fetched
    start = from_source('vit_b_16', a_config(), set())
    assert start.model_args['img_size'] == 224 and start.model_args['n_layer'] == 12 and start.model_args['n_head'] == 12
    assert start.mean == [0.485, 0.456, 0.406] and len(start.classes) == 1000
    model = model_from(start, start.classes)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        theirs, (ours, _) = reference(x), model(x)
    assert theirs.abs().max() > 0.5 and (theirs - ours).abs().max() < 1e-4, (theirs - ours).abs().max()


def test_resampling_the_position_embedding():
    torch.manual_seed(0)
    pos = torch.randn(1, 14 * 14, 8)
    assert torch.allclose(resample_pos_embd(pos, 14), pos, atol=1e-6)  # to its own grid: nothing changes
    # a ramp along x stays a ramp at another resolution: bicubic on the 2-D grid, not on the flat sequence
    ramp = torch.arange(14.).repeat(14)[None, :, None].expand(1, -1, 2)
    bigger = resample_pos_embd(ramp, 28).view(28, 28, 2)
    assert bigger.shape == (28, 28, 2) and torch.allclose(bigger[0], bigger[17], atol=1e-5)
    assert (bigger[3, 1:, 0] >= bigger[3, :-1, 0] - 1e-5).all() and bigger[3, -1, 0] > 12


def test_a_nanovit_run_imports_with_the_same_logits(trained_run):
    checkpoint = torch.load(trained_run.out / 'ckpt.pt', weights_only=True)
    original = ViT(ViTConfig(**checkpoint['model_args'])).eval()
    original.load_state_dict(checkpoint['model'])
    model = model_from(from_source(str(trained_run.out), a_config(**{k: checkpoint['model_args'][k] for k in (
        'n_layer', 'n_head', 'n_embd', 'patch_size')}), set()), checkpoint['classes'])
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(original(x)[0], model(x)[0]) and original(x)[0].abs().max() > 0.1


def test_fine_tuning_a_run_on_other_classes_keeps_its_normalization_and_architecture(trained_run, tmp_path, run_here):
    # colour pictures of 3 classes into a model trained on grey digits: the pictures made grey, a new zero head
    root = make_picture_folder(str(tmp_path / 'pictures'), per_class=(30, 6), size=(28, 28))
    result = run_here('train.py', *BASE, '--dataset=folder', f'--data_dir={root}', f'--init_from={trained_run.out}',
                      '--n_layer=2', '--max_iters=4', '--eval_interval=4', '--out_dir=ft', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first = losses(tmp_path / 'ft')[1]
    assert abs(first - torch.log(torch.tensor(3.0)).item()) < 0.05  # a zero head: every class at equal odds
    checkpoint = torch.load(tmp_path / 'ft' / 'ckpt.pt', weights_only=True)
    theirs = torch.load(trained_run.out / 'ckpt.pt', weights_only=True)
    assert checkpoint['data_mean'] == theirs['data_mean'] and checkpoint['data_std'] == theirs['data_std']
    assert checkpoint['model_args']['in_chans'] == 1 and checkpoint['model_args']['n_classes'] == 3
    assert checkpoint['classes'] == ['blue', 'green', 'red']
    # the blocks started from the source's weights
    assert not torch.equal(checkpoint['model']['blocks.0.attn.qkv.weight'], theirs['model']['blocks.0.attn.qkv.weight'])
    assert (checkpoint['model']['blocks.0.attn.qkv.weight'] - theirs['model']['blocks.0.attn.qkv.weight']).abs().max() < 0.05
    report = run_here('sample.py', '--out_dir=ft', '--device=cpu', '--n_attention=2', cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert 'test accuracy:' in report.stdout


@pytest.mark.slow
def test_a_fine_tuned_run_resumes_exactly_without_its_source(trained_run, synthetic_data, tmp_path):
    src = tmp_path / 'src'
    shutil.copytree(trained_run.out, src)
    args = [*BASE, f'--data_dir={synthetic_data}', '--init_from=src', '--max_iters=40', '--eval_interval=40',
            '--dropout=0.1', '--aug_translate=1.0', '--layer_decay=0.7']
    reference = run_script('train.py', *args, '--out_dir=whole', cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    process = start_script('train.py', *args, '--out_dir=cut', cwd=tmp_path)
    wait_for_line(process, 'iter 10/40')
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    shutil.rmtree(src)  # the source is not read again
    resumed = run_script('train.py', *args[:-4], '--max_iters=40', '--eval_interval=40', '--dropout=0.1',
                         '--aug_translate=1.0', '--layer_decay=0.7', '--init_from=resume', '--out_dir=cut', cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    whole, cut = losses(tmp_path / 'whole'), losses(tmp_path / 'cut')
    assert sorted(cut) == list(range(1, 41)) and all(cut[i] == pytest.approx(whole[i], abs=1e-6) for i in whole)


def test_the_linear_probe_trains_the_head_alone(trained_run, synthetic_data, tmp_path, run_here):
    result = run_here('train.py', *BASE, f'--data_dir={synthetic_data}', f'--init_from={trained_run.out}', '--linear_probe=True',
                      '--max_iters=5', '--eval_interval=5', '--out_dir=probe', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    before = torch.load(trained_run.out / 'ckpt.pt', weights_only=True)['model']
    after = torch.load(tmp_path / 'probe' / 'ckpt.pt', weights_only=True)['model']
    assert all(torch.equal(before[k], after[k]) for k in after if not k.startswith('head.'))
    assert not torch.equal(before['head.weight'], after['head.weight'])


@pytest.mark.slow
def test_fine_tuning_torchvision_s_vit_b_16_through_train_py(torch_home, tmp_path, run_here):
    # 16 x 16 pictures at img_size=32: the 14 x 14 position grid resampled to 2 x 2, cheap enough for a CPU
    # a recipe written for a small model, in a config file: the source's architecture wins, with a note
    home, _ = torch_home
    root = make_picture_folder(str(tmp_path / 'pictures'), per_class=(8, 2))
    (tmp_path / 'small.py').write_text("n_layer = 2\nn_head = 2\nn_embd = 32\npatch_size = 7\n")
    result = run_here('train.py', str(tmp_path / 'small.py'), '--device=cpu', '--compile=False', '--dtype=float32',
                      '--plot=False', '--dataset=folder', f'--data_dir={root}', '--init_from=vit_b_16', '--img_size=32',
                      '--batch_size=4', '--max_iters=2', '--eval_interval=2', '--out_dir=ft',
                      cwd=tmp_path, env={'TORCH_HOME': str(home), **OFFLINE})
    assert result.returncode == 0, result.stderr
    assert ("note: the architecture is vit_b_16's, not the config's: patch_size 7 -> 16, n_layer 2 -> 12, n_head 2 -> 12, "
            "n_embd 32 -> 768, norm_eps 1e-05 -> 1e-06") in result.stdout
    checkpoint = torch.load(tmp_path / 'ft' / 'ckpt.pt', weights_only=True)
    assert checkpoint['data_mean'] == [0.485, 0.456, 0.406] and checkpoint['model_args']['img_size'] == 32
    assert checkpoint['model']['pos_embd'].shape == (1, 4, 768) and checkpoint['config']['init_from'] == 'vit_b_16'


@pytest.mark.parametrize('init_from,flags,message,code', [
    ('vit_x_99', [], "init_from='vit_x_99' is neither 'scratch', 'resume', a torchvision ViT (vit_b_16, vit_b_32", 2),
    ('vit_b_16:NOPE', [], "vit_b_16 has no weights 'NOPE'; it has IMAGENET1K_V1, IMAGENET1K_SWAG_E2E_V1", 2),
    ('vit_b_32', [], "no weights at {home}/hub/checkpoints/vit_b_32-d86f8d99.pth, and fetching "
                     "https://download.pytorch.org/models/vit_b_32-d86f8d99.pth failed", 1),
    ('src', ['--patch_size=4'], "init_from='src' has patch_size=7 but this run asks for patch_size=4", 2),
    ('vit_b_16', ['--img_size=100'], "bad model config: img_size=100 is not divisible by patch_size=16", 2),  # no fetch first
    ('notvit.pt', [], "notvit.pt is not a nanoViT checkpoint", 1),
])
def test_sources_that_cannot_be_used_are_one_line(init_from, flags, message, code, trained_run, synthetic_data,
                                                  tmp_path, run_here):
    shutil.copytree(trained_run.out, tmp_path / 'src')
    torch.save({'weights': torch.zeros(3)}, tmp_path / 'notvit.pt')
    # a torchvision ViT's own architecture, for what is tried after it: no model flags
    base = [a for a in BASE if not a.startswith(('--n_', '--patch'))] if init_from.startswith('vit_') else BASE
    result = run_here('train.py', *base, f'--data_dir={synthetic_data}', f'--init_from={init_from}', *flags,
                      cwd=tmp_path, env={'TORCH_HOME': str(tmp_path / 'empty'), **OFFLINE})
    assert_one_line_error(result, message.format(home=tmp_path / 'empty'), code=code)


def test_the_log_names_the_fine_tuned_model_s_head_size_not_the_config_s(trained_run, synthetic_data, tmp_path, run_here):
    (tmp_path / 'narrow.py').write_text("n_layer = 2\nn_head = 4\nn_embd = 32\npatch_size = 7\n")  # heads of 8
    result = run_here('train.py', str(tmp_path / 'narrow.py'), '--device=cpu', '--compile=False', '--plot=False',
                      f'--data_dir={synthetic_data}', f'--init_from={trained_run.out}', '--max_iters=2',
                      '--eval_interval=2', '--out_dir=ft', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "note: the architecture is" in result.stdout and 'n_head 4 -> 2' in result.stdout
    assert torch.load(tmp_path / 'ft' / 'ckpt.pt', weights_only=True)['model_args']['n_head'] == 2  # the source's

# -----------------------------------------------------------------------------
# timm's ViTs (random weights: nothing is fetched here)

slow = pytest.mark.slow
FAMILIES = ['vit_tiny_patch16_224.augreg_in21k_ft_in1k',  # AugReg: a cls token with a position of its own
            pytest.param('deit_small_patch16_224.fb_in1k', marks=slow),  # DeiT
            'deit3_small_patch16_224.fb_in1k',  # DeiT III: LayerScale, positions for the patches alone
            pytest.param('vit_small_patch14_dinov2.lvd142m', marks=slow),  # DINOv2: LayerScale, no head, 518 px
            pytest.param('vit_small_patch14_reg4_dinov2.lvd142m', marks=slow),  # DINOv2 with 4 registers (518 px: 6 s)
            pytest.param('vit_small_patch8_224.dino', marks=slow),  # patch 8 (DINO, no head)
            pytest.param('vit_base_patch32_224.augreg_in21k_ft_in1k', marks=slow)]  # patch 32


@pytest.mark.parametrize('name', FAMILIES)
def test_a_timm_vit_imports_with_the_same_features(name, monkeypatch):
    timm = pytest.importorskip('timm')
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False).eval()
    for p in reference.parameters():  # every weight random, LayerScale's and the tokens' included
        torch.nn.init.normal_(p, std=0.05)
    real = timm.create_model
    monkeypatch.setattr(timm, 'create_model', lambda n, pretrained=False: reference if pretrained else real(n))
    start = from_source(f'timm:{name}', a_config(), set())
    assert start.mean == list(reference.pretrained_cfg['mean']) and start.crop == reference.pretrained_cfg['crop_pct']
    classes = [str(i) for i in range(reference.num_classes or 3)]  # its own head's classes: the head kept
    start.classes = classes if reference.num_classes else None
    model = ViT(start.settle(None, classes)).eval()
    start.load_weights(model, classes)
    side = model.config.img_size
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        theirs = reference.forward_head(reference.forward_features(x), pre_logits=True)
        ours = model.pool(model.ln_f(run_blocks(model, x)))
        assert (theirs - ours).abs().max() < 1e-5, (theirs - ours).abs().max()
        if reference.num_classes:
            assert (reference(x) - model(x)[0]).abs().max() < 1e-5


def run_blocks(model, x):
    x = model.embed(x)
    for block in model.blocks:
        x = block(x)
    return x


@pytest.fixture(scope='module')
def hf_home(tmp_path_factory):
    """An HF_HOME whose Hugging Face cache holds random weights for timm's ViT-Ti/16 (AugReg), where timm's own loader
    looks for them, and the timm model they came from."""
    timm = pytest.importorskip('timm')
    import safetensors.torch
    home = tmp_path_factory.mktemp('hf_home')
    torch.manual_seed(0)
    reference = timm.create_model(TINY_TIMM, pretrained=False)
    for p in reference.parameters():
        torch.nn.init.normal_(p, std=0.05)
    repo = home / 'hub' / f"models--{reference.pretrained_cfg['hf_hub_id'].replace('/', '--')}"
    os.makedirs(repo / 'snapshots' / ('0' * 40))
    os.makedirs(repo / 'refs')
    (repo / 'refs' / 'main').write_text('0' * 40)
    safetensors.torch.save_file(reference.state_dict(), repo / 'snapshots' / ('0' * 40) / 'model.safetensors')
    return home, reference


TINY_TIMM = 'vit_tiny_patch16_224.augreg_in21k_ft_in1k'


@pytest.mark.slow
def test_fine_tuning_a_timm_vit_through_train_py_reads_its_weights_from_the_hugging_face_cache(hf_home, tmp_path):
    home, reference = hf_home
    root = make_picture_folder(str(tmp_path / 'pictures'), per_class=(8, 2))
    args = ['--device=cpu', '--compile=False', '--plot=False', '--dataset=folder', f'--data_dir={root}',
            f'--init_from=timm:{TINY_TIMM}', '--img_size=32', '--linear_probe=True', '--batch_size=4', '--max_iters=2',
            '--eval_interval=2']
    result = run_script('train.py', *args, '--out_dir=ft', cwd=tmp_path,
                        env={'HF_HOME': str(home), 'HF_HUB_OFFLINE': '1', **OFFLINE})
    assert result.returncode == 0, result.stderr
    checkpoint = torch.load(tmp_path / 'ft' / 'ckpt.pt', weights_only=True)
    assert checkpoint['data_mean'] == [0.5, 0.5, 0.5] and checkpoint['model_args']['n_embd'] == 192
    assert checkpoint['config']['init_from'] == f'timm:{TINY_TIMM}' and checkpoint['model']['pos_embd'].shape == (1, 4, 192)
    # the blocks are frozen (a linear probe): exactly the weights timm's loader read from the cache
    assert torch.equal(checkpoint['model']['blocks.3.mlp.fc.weight'], reference.state_dict()['blocks.3.mlp.fc1.weight'])
    assert torch.equal(checkpoint['model']['cls_token'], reference.cls_token + reference.pos_embed[:, :1])
    # an empty cache and no network: one line, before any picture is decoded
    result = run_script('train.py', *args, '--out_dir=none', cwd=tmp_path,
                        env={'HF_HOME': str(tmp_path / 'empty'), 'HF_HUB_OFFLINE': '1', **OFFLINE})
    assert_one_line_error(result, f"init_from='timm:{TINY_TIMM}': timm could not load its weights")
    assert 'decoded' not in result.stdout and not (tmp_path / 'none').exists()


@pytest.mark.parametrize('name,message', [
    ('deit_tiny_distilled_patch16_224.fb_in1k', "is not a ViT model.py expresses: it has the structure of a "
                                                "VisionTransformerDistilled (a distillation token"),
    ('vit_tiny_r_s16_p8_224.augreg_in21k', "is not a ViT model.py expresses: it has a convolutional stem"),
    ('vit_base_patch16_siglip_224.webli', "it has pooling 'map'"),
    ('vit_wee_patch16_reg1_gap_256.sbb_in1k', "it has a norm after the pooling (fc_norm)"),
    ('vit_nope_patch16_224', "has no model 'vit_nope_patch16_224'"),
])
def test_timm_sources_that_cannot_be_used_are_one_line_before_any_fetch(name, message, capsys, monkeypatch):
    timm = pytest.importorskip('timm')
    monkeypatch.setattr(timm, 'create_model', lambda n, pretrained=False, real=timm.create_model: (
        pytest.fail('fetched') if pretrained else real(n)))
    with pytest.raises(SystemExit) as stop:
        from_source(f'timm:{name}', a_config(), set())
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_without_timm_a_timm_source_says_how_to_get_it(tmp_path, run_here, monkeypatch):
    monkeypatch.setitem(sys.modules, 'timm', None)  # as if it were not installed
    result = run_here('train.py', f'--init_from=timm:{TINY_TIMM}', '--device=cpu', cwd=tmp_path)
    assert_one_line_error(result, f"init_from='timm:{TINY_TIMM}' needs timm, which is not installed", code=2)
    assert result.stderr.strip().endswith('pip install timm')
