# Your own photos, a few hundred of them in class folders, fine-tuned from timm's ViT-S/16 (AugReg: ImageNet-21k, then
# ImageNet-1k; 22M parameters, 4.6 GFLOPs a 224 px picture; fetched once into the Hugging Face cache), on a laptop CPU
# or a GPU (pip install timm):
# $ python train.py config/finetune_folder.py --data_dir=~/pets
# data_dir/train/<class>/*.jpg and data_dir/test/<class>/*.jpg (or val/), any size: each photo's shorter side resized to
# 249 once (prepare.py), random-resized crops of 224 for training, the centre 0.9 for testing, normalized as the weights
# expect (timm's pretrained_cfg: mean and std 0.5, crop 0.9).
# Why ViT-S/16: it transfers to small sets nearly as well as ViT-B/16 (Steiner et al., "How to train your
# ViT", 2021) at a fraction of the step: on a 2-core AMD EPYC with AVX-512 BF16 (records/finetune_costs.py,
# 2026-12-06), a bf16 step of 32 pictures at 224 px took 3.6 s for ViT-S/16 against 12.4 s for ViT-B/16 and 1.3 s for
# ViT-Ti/16 (float32: 7.0, 23.6 and 2.0 s): 150 steps, 16 epochs of 300 photos, in about 9 minutes of steps (17 in
# float32). ViT-Ti/16 (--init_from=timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k) is three times cheaper for some
# points less; on a GPU,
# --init_from=timm:vit_base_patch16_224.augreg2_in21k_ft_in1k.
# The optimizer, at a small batch: AdamW at 1e-4, a tenth of a rate that trains from scratch, with the weight decay of
# DeiT's training recipe (0.05) and a cosine decay (the ViT paper fine-tuned with SGD at 0.001-0.03 at batch
# 512), a short warmup, gradient clipping at 1, label smoothing 0.1. A rate of 1e-3, which trains a small model from
# scratch, washes the pretrained features out.
# NOT MEASURED: no pretrained weights can be fetched on the machine this was written on (2026-12-06, a 2-core CPU, no
# GPU); whoever runs it, write the time and the accuracy here.
out_dir = 'out-finetune'
dataset = 'folder'
init_from = 'timm:vit_small_patch16_224.augreg_in21k_ft_in1k'
img_size = 224
store_size = 249  # 224 / 0.9: the test crop is the weights' own
eval_interval = 50
log_interval = 10

batch_size = 32
max_iters = 150  # 16 epochs of 300 photos
optimizer = 'adamw'
learning_rate = 1e-4
warmup_iters = 15
min_lr = 1e-6
weight_decay = 0.05
grad_clip = 1.0
label_smoothing = 0.1
aug_rrc_scale = 0.35  # random-resized crops of 35% to 100% of each photo
aug_flip = True
