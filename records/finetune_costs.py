"""
What fine-tuning a pretrained ViT costs on this machine: bench.py's training step (train.py's: forward, backward,
clip, AdamW step) for timm's ViT-Ti/16 and ViT-S/16 and ViT-B/16 (their shapes: no weights are needed), batch 32, at
224 px and at 112 px (the position embedding resampled to the smaller grid), in every dtype the CPU runs well; ms per
step and the process's peak memory, one bench.py process a row.
$ python records/finetune_costs.py
$ python records/finetune_costs.py --sides=224 --batch_size=16
"""
import json
import os
import subprocess
import sys
import tempfile

# -----------------------------------------------------------------------------
models = 'vit_tiny_patch16_224.augreg_in21k_ft_in1k,vit_small_patch16_224.augreg_in21k_ft_in1k,vit_base_patch16_224.augreg2_in21k_ft_in1k'
sides = '224,112'
dtypes = 'bfloat16,float32'  # where the CPU has no native bf16, float32 alone
batch_size = 32
iters = 3  # timed steps of each, after one untimed
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
exec(open(os.path.join(REPO, 'configurator.py')).read())
# -----------------------------------------------------------------------------
print(f"| model | side | dtype | ms a step of {batch_size} | pictures a second | peak memory |")
print("|---|---|---|---|---|---|")
for model in models.split(','):
    for side in map(int, sides.split(',')):
        for dtype in dtypes.split(','):
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, 'b.json')
                result = subprocess.run([sys.executable, os.path.join(REPO, 'bench.py'), f'--init_from=timm:{model}',
                                         '--dataset=folder', f'--img_size={side}', f'--batch_size={batch_size}',
                                         f'--dtype={dtype}', '--compile=False', '--torchvision_vit=False',
                                         '--bench_warmup=1', f'--bench_iters={iters}', f'--bench_out={out}'],
                                        capture_output=True, text=True)
                if result.returncode:
                    sys.exit(f"bench.py failed for {model} at {side}: {result.stderr.strip().splitlines()[-1]}")
                report = json.load(open(out))
            row = report['rows'][0]
            print(f"| {model.split('.')[0]} | {side} | {dtype} | {row['ms_per_iter']:.0f} | "
                  f"{row['images_per_s']:.1f} | {report['peak_rss_mib']:.0f} MiB |", flush=True)
