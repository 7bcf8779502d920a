# ImageNet-1k at 64 x 64 on 8 GPUs: a ViT-S (12 layers, 6 heads, 384 wide) on 8 x 8 patches (64 tokens), after
# big_vision's plain-ViT recipe ("Better plain ViT baselines for ImageNet-1k": ViT-S/16 at 224, 76.5% top-1 in
# 90 epochs): mean pooling, fixed 2-D sin-cos positions, zero head, AdamW at 1e-3 with 10k warmup steps and a
# cosine decay, batch 1024, 90 epochs. nanoViT has neither RandAugment nor Mixup: random-resized crops from a
# store kept at 72 px, and mirror images, stand in for them; expect less than the paper's figure, and less again
# at 64 px than at 224.
# $ torchrun --standalone --nproc_per_node=8 train.py config/imagenet64.py --data_dir=/data/imagenet
# data_dir/train/n01440764/*.JPEG ..., data_dir/val/n01440764/*.JPEG ... (README, "Datasets").
# NOT RUN (written 2026-12-01 on a 2-core CPU, with no GPU and no ImageNet). Whoever runs it: write the time,
# the hardware and the final top-1 here.
out_dir = 'out-imagenet64'
dataset = 'folder'
store_size = 72  # the store: 1.28M pictures x 3 x 72 x 72 = 19.9 GB on disk, read through a memory map
img_size = 64
eval_interval = 5000
log_interval = 100
eval_batch_size = 1000

n_layer = 12
n_head = 6
n_embd = 384
patch_size = 8
pool = 'mean'
pos_embd = 'sincos'

batch_size = 128  # per GPU: 1024 images per iteration on 8
max_iters = 112_590  # 90 epochs of 1,281,167 pictures at 1024
optimizer = 'adamw'
learning_rate = 1e-3
warmup_iters = 10_000
min_lr = 1e-5
weight_decay = 0.1  # big_vision's 1e-4 is not multiplied by the learning rate; torch's AdamW multiplies it by 1e-3
beta2 = 0.999
grad_clip = 1.0
aug_rrc_scale = 0.08  # Inception's crops: 8% to 100% of the area
aug_flip = True
