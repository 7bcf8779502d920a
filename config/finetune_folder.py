# Your own photos, a few hundred of them in class folders, fine-tuned from timm's ViT-S/16 (AugReg: ImageNet-21k, then
# ImageNet-1k; 22M parameters, 4.6 GFLOPs a 224 px picture; fetched once into the Hugging Face cache), on a laptop CPU
# or a GPU (pip install timm):
# $ python train.py config/finetune_folder.py --data_dir=~/pets
# data_dir/train/<class>/*.jpg and data_dir/test/<class>/*.jpg (or val/), any size: each photo's shorter side resized to
# 249 once (prepare.py), random-resized crops of 224 for training, the centre 0.9 for testing, normalized as the weights
# expect (timm's pretrained_cfg: mean and std 0.5, crop 0.9).
# Why ViT-S/16: on a 2-core CPU its step is about a quarter of ViT-B/16's (records/README.md, "Fine-tuning on a CPU")
# and AugReg's ViT-S/16 fine-tunes to within a point or two of ViT-B/16 on small sets (Steiner et al., "How to train
# your ViT", 2021); ViT-Ti/16 is cheaper again, at a larger loss. For a GPU: --init_from=timm:vit_base_patch16_224.augreg2_in21k_ft_in1k.
# The optimizer follows the published fine-tuning recipes for these weights at a small batch: AdamW at 1e-4 with
# weight decay 0.05 and a cosine decay (DeiT's and timm's fine-tuning; the ViT paper's SGD at 0.001-0.03 is for batch
# 512), a short warmup, gradient clipping at 1, label smoothing 0.1. A rate of 1e-3, which trains a small model from
# scratch, washes the pretrained features out.
# NOT MEASURED: no pretrained weights can be fetched on the machine this was written on (2026-12-06, a 2-core CPU, no
# GPU); whoever runs it, write the time and the accuracy here.
out_dir = 'out-finetune'
dataset = 'folder'
init_from = 'timm:vit_small_patch16_224.augreg_in21k_ft_in1k'
img_size = 224
store_size = 249  # 224 / 0.9: the test crop is the weights' own
eval_interval = 100
log_interval = 10

batch_size = 32
max_iters = 500  # a few hundred pictures: tens of epochs
optimizer = 'adamw'
learning_rate = 1e-4
warmup_iters = 50
min_lr = 1e-6
weight_decay = 0.05
grad_clip = 1.0
label_smoothing = 0.1
aug_rrc_scale = 0.35  # random-resized crops of 35% to 100% of each photo
aug_flip = True
