"""What a careless or unlucky user does to nanoViT (issue 19's list), and the answer each deserves: the run
carries on, or stops at start with one line naming the culprit, never losing what was saved."""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, TINY, assert_one_line_error, make_picture_folder, png_claiming, run_script
from data import load_folder, load_split, read_image
from store import channel_stats
from model import ViT, ViTConfig

FOLDER = TINY + ['--dataset=folder', '--max_iters=4', '--eval_interval=4', '--log_interval=2']


@pytest.fixture
def pictures(tmp_path):
    """3 classes of 28x28 colour pictures, 30 train and 10 test each."""
    return make_picture_folder(str(tmp_path / 'pictures'), per_class=(30, 10), size=(28, 28))


def grey_folder(root, sizes=(('train', 28), ('test', 28)), n=12):
    for split, side in sizes:
        for c in ('a', 'b'):
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for i in range(n):
                Image.new('L', (side, side), 40 * i % 255 if c == 'a' else 255 - 20 * i).save(
                    os.path.join(root, split, c, f'{i}.png'))
    return str(root)


# -----------------------------------------------------------------------------
# the two splits are one dataset: the training split decides channels and size


def test_a_colour_picture_among_grey_test_pictures_is_made_grey(tmp_path, run_here):
    root = grey_folder(tmp_path / 'grey')
    Image.new('RGB', (28, 28), (200, 10, 10)).save(tmp_path / 'grey' / 'test' / 'a' / 'colour.png')
    train = load_split('folder', root, True, 0)
    assert train.images.shape[1] == 1 and load_split('folder', root, False, 0, like=train.images).images.shape[1] == 3
    result = run_here('train.py', *FOLDER, '--batch_size=8', f'--data_dir={root}', cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # the model takes grey: each test batch is made grey
    assert 'data: folder, 24 train / 25 test images of 1x28x28' in result.stdout


def test_test_pictures_of_another_size_stop_the_run_at_start(tmp_path, run_here):
    root = grey_folder(tmp_path / 'sizes', sizes=(('train', 28), ('test', 32)))
    result = run_here('train.py', *FOLDER, f'--data_dir={root}', '--out_dir=out', cwd=tmp_path)
    assert_one_line_error(result, 'the test pictures are 32x32, the training pictures 28x28; set --img_size=N', code=2)
    assert not (tmp_path / 'out' / 'metrics.jsonl').exists()  # before any training


# -----------------------------------------------------------------------------
# decoding


def killed_on_one(path, size, real=__import__('data').decode_one):
    if path.endswith(os.path.join('b', '7.png')):
        os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
    return real(path, size)


def test_a_decoding_process_that_dies_is_one_line_not_a_hang(tmp_path, monkeypatch, capsys):
    root = tmp_path / 'many'
    for c in ('a', 'b'):
        os.makedirs(root / 'train' / c)
        for i in range(520):  # more than 1000 pictures: decoded by a pool of processes
            Image.new('L', (4, 4), i % 256).save(root / 'train' / c / f'{i}.png')
    import data
    monkeypatch.setattr(data, 'decode_one', killed_on_one)
    signal.alarm(60)  # a hang fails the test instead of the suite
    try:
        with pytest.raises(SystemExit):
            load_folder(str(root), True, 0)
    finally:
        signal.alarm(0)
    assert 'a process decoding the 1040 pictures died (killed, or out of memory?)' in capsys.readouterr().err


def test_a_picture_too_large_to_decode_whole_is_refused_before_decoding(tmp_path):
    # a 16-bit 12000 x 12000 PNG is a few hundred KB on disk and gigabytes once decoded: PNG has no draft mode
    with pytest.raises(ValueError, match=r'too large to decode safely \(12000x12000 pixels, more than 50,000,000\)'):
        read_image(png_claiming(tmp_path / 'deep.png', 12000, 12000))


# -----------------------------------------------------------------------------
# the store of decoded pictures


def test_a_picture_changed_with_its_size_and_time_kept_is_decoded_again(tmp_path):
    root = grey_folder(tmp_path / 'bmp', n=3)
    path = os.path.join(root, 'train', 'a', '0.png')
    bmp = path.replace('.png', '.bmp')
    Image.new('L', (28, 28), 0).save(bmp)  # BMP: the same size on disk whatever the pixels
    before = os.stat(bmp)
    images = load_folder(root, True, 0).images.clone()
    Image.new('L', (28, 28), 255).save(bmp)
    os.utime(bmp, ns=(before.st_atime_ns, before.st_mtime_ns))  # touch -r: the old modification time
    assert os.path.getsize(bmp) == before.st_size
    again = load_folder(root, True, 0).images
    assert not torch.equal(again, images) and again.max() == 255


def test_a_full_disk_while_writing_the_store_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, run_here):
    root = grey_folder(tmp_path / 'full', n=3)
    import store
    real = store.channel_stats

    def disk_full(images):  # the pictures are written: the statistics' file is what the disk refuses
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(store, 'channel_stats', disk_full)
    result = run_here('train.py', *FOLDER, f'--data_dir={root}', cwd=tmp_path)
    assert_one_line_error(result, 'could not write the picture store')
    assert 'No space left on device; nothing half-made is left, the next start builds it again' in result.stderr
    cache = os.path.join(os.environ['XDG_CACHE_HOME'], 'nanovit')
    assert not [name for name in os.listdir(cache) if name.startswith('full-') and not name.endswith('.lock')]
    monkeypatch.setattr(store, 'channel_stats', real)
    assert load_folder(root, True, 0).images.shape == (6, 1, 28, 28)


@pytest.mark.parametrize('damage', ['label -1', 'fewer labels', 'two channels', 'float labels', 'a class missing',
                                    'another version', 'other files'])
def test_a_store_is_checked_for_everything_it_claims(damage, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    root = grey_folder(tmp_path / 'pics', n=3)
    first = load_folder(root, True, 0)
    images, labels = first.images.clone(), first.labels.clone()
    meta_path, labels_path = os.path.join(first.path, 'meta.json'), os.path.join(first.path, 'labels.i64')
    meta = json.load(open(meta_path))
    if damage == 'label -1':
        bad = labels.clone()
        bad[0] = -1
        bad.numpy().tofile(labels_path)
    elif damage == 'fewer labels':
        labels[:-1].numpy().tofile(labels_path)
    elif damage == 'two channels':
        meta['shape'][1] = 2
    elif damage == 'float labels':
        labels.double().numpy().tofile(labels_path)
    elif damage == 'a class missing':
        torch.zeros_like(labels).numpy().tofile(labels_path)
    elif damage == 'another version':
        meta['version'] = -1
    else:
        meta['key'] = 'made from other files'
    json.dump(meta, open(meta_path, 'w'))
    capsys.readouterr()
    again = load_folder(root, True, 0)
    assert 'is damaged, of another version or made from other files' in capsys.readouterr().out
    assert torch.equal(again.images, images) and torch.equal(again.labels, labels)


def test_a_store_deleted_under_a_running_run_is_one_line(tmp_path, run_here, monkeypatch):
    root = grey_folder(tmp_path / 'gone', n=12)
    import shutil as sh
    import data
    real_place = data.place

    def delete_then_place(split, device, placement):
        sh.rmtree(split.path)  # as a user cleaning ~/.cache mid-run would: the open map keeps the pictures readable
        return real_place(split, device, placement)
    monkeypatch.setattr(data, 'place', delete_then_place)
    result = run_here('train.py', *FOLDER, '--batch_size=8', f'--data_dir={root}', cwd=tmp_path)
    assert result.returncode == 0, result.stderr


# -----------------------------------------------------------------------------
# values that were wrong without a word


def test_pos_std_is_the_std_drawn(tmp_path):
    torch.manual_seed(0)
    drawn = ViT(ViTConfig(n_layer=1, n_embd=64, n_head=2, pos_std=3.0)).pos_embd.std().item()
    # a normal cut at 2 std has 0.88 of its std: 2.64, where a cut at +-2 whatever the std gave 1.10
    assert 2.5 < drawn < 2.8
    with pytest.raises(ValueError, match='pos_std=-1.0 must be 0 or more'):
        ViTConfig(pos_std=-1.0)


@pytest.mark.parametrize('flag,message', [
    ('nan.py', 'pos_std=nan must be a finite number'), ('--learning_rate=1e999', 'learning_rate=inf must be a finite number'),
    ('--weight_decay=1e999', 'weight_decay=inf must be'), ('--aug_rotate=1e999', 'aug_rotate=inf must be'),
    ('--mlp_ratio=1e999', 'mlp_ratio=inf must be a finite number'),
    ('--tta_shift=14', 'tta_shift=14 shifts the 28x28 pictures by half their side or more; keep it below 14'),
    ('--aug_translate=20.0', 'aug_translate=20.0 shifts the 28x28 pictures'),
])
def test_values_that_cannot_mean_anything_stop_at_start(flag, message, synthetic_data, tmp_path, run_here):
    if flag == 'nan.py':  # a NaN comes from a config file
        (tmp_path / flag).write_text("pos_std = float('nan')\n")
        flag = str(tmp_path / flag)
    result = run_here('train.py', *TINY, f'--data_dir={synthetic_data}', flag, '--out_dir=out', cwd=tmp_path)
    assert_one_line_error(result, message, code=2)
    assert not (tmp_path / 'out' / 'metrics.jsonl').exists()


def test_a_constant_channel_is_centred_not_divided_by_zero(capsys):
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    images[:, 1] = 77
    mean, std = channel_stats(images)
    assert std[1] == 1.0 and mean[1] == pytest.approx(77 / 255) and all(np.isfinite(std))
    assert 'note: channel 1 of the training pictures is constant (77)' in capsys.readouterr().out


# -----------------------------------------------------------------------------
# folders, files and names


@pytest.mark.slow
def test_symlinked_folders_and_names_that_are_not_utf8(tmp_path):
    # under a UTF-8 locale with strict printing (as a terminal has it): train.py and sample.py print such names
    root = make_picture_folder(str(tmp_path / 'pictures'), per_class=(20, 5))
    os.symlink(os.path.join(root, 'train', 'blue'), os.path.join(root, 'train', 'red', 'linked'))
    odd = os.fsencode(os.path.join(root, 'train', 'red')) + b'/caf\xe9.png'
    shutil.copy(os.path.join(root, 'train', 'red', '000.png'), odd)
    for split in ('train', 'test'):  # a class folder whose name is not UTF-8
        os.rename(os.path.join(root, split, 'green'), os.fsencode(os.path.join(root, split)) + b'/gr\xfcn')
    env = {'PYTHONIOENCODING': 'utf-8', 'LC_ALL': 'C.UTF-8'}
    result = run_script('train.py', *FOLDER, f'--data_dir={root}', '--patch_size=4', '--out_dir=out', cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert 'left out 1 files' in result.stdout and 'red/linked' in result.stdout  # the symlinked folder, named
    assert 'data: folder, 61 train / 15 test images' in result.stdout
    report = run_script('sample.py', '--out_dir=out', '--device=cpu', '--n_attention=0', cwd=tmp_path, env=env)
    assert report.returncode == 0, report.stderr
    assert 'gr\\udcfcn' in report.stdout


def test_a_config_file_that_is_not_utf8(tmp_path, run_here):
    (tmp_path / 'c.py').write_bytes(b'# r\xe9glages\nmax_iters = 3\n')
    for script in ('train.py', 'bench.py', 'sample.py'):
        result = run_here(script, str(tmp_path / 'c.py'), cwd=tmp_path)
        assert_one_line_error(result, f"{tmp_path / 'c.py'} is not UTF-8 text (byte 0xe9 at offset 3)", code=2)


@pytest.mark.slow
def test_under_torchrun_one_process_s_error_is_the_only_line(tmp_path):
    # process 0 stops at its data (no such folder) while process 1 waits for it: process 1 exits quietly
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                             os.path.join(REPO, 'train.py'), *TINY, '--dataset=folder', '--data_dir=nowhere'],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.count('error: ') == 1 and "data_dir='" in result.stderr, result.stderr
    assert 'train.py", line' not in result.stderr, result.stderr  # no worker's traceback
    assert 'broadcast_buffers' not in result.stderr


# -----------------------------------------------------------------------------
# edited or older files


@pytest.fixture(scope='module')
def short_run(synthetic_data, tmp_path_factory):
    cwd = tmp_path_factory.mktemp('short')
    result = run_script('train.py', *TINY, f'--data_dir={synthetic_data}', '--max_iters=10', '--eval_interval=10',
                        '--out_dir=out', cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd / 'out'


@pytest.fixture
def copy_of(short_run, tmp_path):
    shutil.copytree(short_run, tmp_path / 'out')
    return tmp_path / 'out'


def edit_checkpoint(out, edit):
    checkpoint = torch.load(out / 'ckpt.pt', weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, out / 'ckpt.pt')


def test_an_older_checkpoint_resumes(copy_of, synthetic_data, run_here):
    # saved before gradient_accumulation_steps and qk_norm existed, and before the count of its pictures
    def older(checkpoint):
        del checkpoint['config']['gradient_accumulation_steps'], checkpoint['model_args']['qk_norm']
        del checkpoint['n_train']
    edit_checkpoint(copy_of, older)
    result = run_here('train.py', *TINY, f'--data_dir={synthetic_data}', '--max_iters=12', '--eval_interval=12',
                      '--out_dir=out', '--init_from=resume', cwd=copy_of.parent)
    assert result.returncode == 0, result.stderr
    assert 'qk_norm' not in result.stderr and 'gradient_accumulation_steps' not in result.stdout


def test_a_checkpoint_with_a_model_key_this_version_lacks_is_one_line_on_resume(copy_of, synthetic_data, run_here):
    edit_checkpoint(copy_of, lambda c: c['model_args'].update(rope=True))
    result = run_here('train.py', *TINY, f'--data_dir={synthetic_data}', '--max_iters=12', '--out_dir=out',
                      '--init_from=resume', cwd=copy_of.parent)
    assert_one_line_error(result, "out/ckpt.pt: model_args hold rope, which this version of nanoViT does not know")


def test_a_resume_with_pictures_added_says_so(tmp_path, run_here):
    root = grey_folder(tmp_path / 'grow')
    args = [*FOLDER, '--batch_size=8', f'--data_dir={root}', '--max_iters=2', '--eval_interval=2']
    assert run_here('train.py', *args, cwd=tmp_path).returncode == 0
    Image.new('L', (28, 28), 9).save(tmp_path / 'grow' / 'train' / 'a' / 'new.png')
    result = run_here('train.py', *args[:-2], '--max_iters=4', '--eval_interval=4', '--init_from=resume', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'training pictures 24 -> 25 (the batches are drawn anew)' in result.stdout


@pytest.mark.parametrize('edit,args,message', [
    ('extra model key', [], "model_args hold rope, which this version of nanoViT does not know"),
    ('no data_dir', [], "does not say where its data is: give --data_dir"),
    ('figure is a folder', [], "could not write out/predictions.png: Is a directory"),
    (None, ['--image=,'], "image=',' names no picture"),
])
def test_sample_py_on_edited_files(edit, args, message, copy_of, run_here):
    if edit == 'extra model key':
        edit_checkpoint(copy_of, lambda c: c['model_args'].update(rope=True))
    elif edit == 'no data_dir':
        edit_checkpoint(copy_of, lambda c: c['config'].pop('data_dir'))
    elif edit == 'figure is a folder':
        os.makedirs(copy_of / 'predictions.png')
    result = run_here('sample.py', '--out_dir=out', '--device=cpu', *args, cwd=copy_of.parent)
    assert_one_line_error(result, message)


def test_sample_py_refuses_a_folder_of_other_classes(tmp_path, run_here):
    root = make_picture_folder(str(tmp_path / 'pictures'), per_class=(20, 5))
    assert run_here('train.py', *FOLDER, f'--data_dir={root}', '--patch_size=4', cwd=tmp_path).returncode == 0
    other = tmp_path / 'other'
    for split in ('train', 'test'):
        for c in ('cat', 'dog'):
            os.makedirs(other / split / c)
            Image.new('RGB', (16, 16), 'white').save(other / split / c / '0.png')
    result = run_here('sample.py', '--out_dir=out-mnist', '--device=cpu', f'--data_dir={other}', cwd=tmp_path)
    assert_one_line_error(result, "the classes in")
    assert "(cat, dog) are not the 3 the model was trained on (blue, green, red)" in result.stderr
    assert not (tmp_path / 'out-mnist' / 'predictions.png').exists()


def test_a_metrics_file_with_a_line_that_is_not_a_record(copy_of, synthetic_data, run_here):
    with open(copy_of / 'metrics.jsonl') as f:
        lines = f.readlines()
    lines.insert(1, '[1, 2, 3]\n')
    (copy_of / 'metrics.jsonl').write_text(''.join(lines))
    result = run_here('train.py', *TINY, f'--data_dir={synthetic_data}', '--max_iters=12', '--init_from=resume',
                      '--out_dir=out', cwd=copy_of.parent)
    assert_one_line_error(result, "out/metrics.jsonl, line 2: not a metrics record")
    result = run_here('plot.py', 'out', cwd=copy_of.parent)
    assert_one_line_error(result, "line 2: not a metrics record")


def test_a_full_disk_at_the_curves_is_a_note_and_the_run_goes_on(synthetic_data, tmp_path, run_here):
    os.makedirs(tmp_path / 'out')
    os.symlink('/dev/full', tmp_path / 'out' / 'curves.png')
    result = run_here('train.py', *TINY, f'--data_dir={synthetic_data}', '--max_iters=4', '--eval_interval=2',
                      '--plot=True', '--out_dir=out', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'note: could not draw out/curves.png (No space left on device); training goes on' in result.stdout
    assert torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['iter_num'] == 4


@pytest.mark.parametrize('args,message', [
    (['--bench_iters=0'], 'bench_iters=0 must be at least 1'),
    (['--bench_out=.'], "bench_out='.' is a folder"),
])
def test_bench_refuses_before_timing(args, message, tmp_path, run_here):
    result = run_here('bench.py', '--device=cpu', *args, cwd=tmp_path)
    assert_one_line_error(result, message, code=2)


def test_plot_py_to_a_format_it_cannot_write(tmp_path, run_here):
    (tmp_path / 'a').mkdir()
    (tmp_path / 'a' / 'metrics.jsonl').write_text(json.dumps({'iter': 1, 'loss': 1.0, 'lr': 1e-3, 'ms': 1.0}) + '\n')
    result = run_here('plot.py', 'a', '--out=x.xyz', cwd=tmp_path)
    assert_one_line_error(result, "could not write x.xyz: Format 'xyz' is not supported")


# -----------------------------------------------------------------------------
# small things


def test_out_dir_with_a_tilde_is_in_the_home_folder(synthetic_data, tmp_path, run_here, monkeypatch):
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    result = run_here('train.py', *TINY, f'--data_dir={synthetic_data}', '--max_iters=2', '--eval_interval=2',
                      '--out_dir=~/run', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / 'home' / 'run' / 'ckpt.pt').exists() and not (tmp_path / '~').exists()


def test_img_size_too_small_for_the_patches_stops_before_decoding(pictures, tmp_path, run_here):
    result = run_here('train.py', *FOLDER, f'--data_dir={pictures}', '--img_size=6', cwd=tmp_path)
    assert_one_line_error(result, 'bad model config: img_size=6 is not divisible by patch_size=7', code=2)
    assert 'decoded' not in result.stdout


def test_ctrl_c_while_building_the_store_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    root = grey_folder(tmp_path / 'stop', n=3)
    import data

    def interrupted(*args):
        raise KeyboardInterrupt  # Ctrl-C lands in the main process, mid-decode
    monkeypatch.setattr(data, 'decode_chunk', interrupted)
    with pytest.raises(SystemExit) as stop:
        load_folder(root, True, 0)
    assert stop.value.code == 130 and 'stopped while building the picture store' in capsys.readouterr().err
    assert [n for n in os.listdir(tmp_path / 'cache' / 'nanovit') if not n.endswith('.lock')] == []
