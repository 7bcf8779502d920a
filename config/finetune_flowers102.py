# Oxford Flowers-102 (102 kinds of flowers; torchvision downloads it into data/, 330 MB) fine-tuned from timm's
# ViT-S/16 (AugReg, ImageNet-21k then 1k), on a GPU or, slowly, a CPU (pip install timm):
# $ python train.py config/finetune_flowers102.py
# Its train split (1,020 pictures, 10 a class) trains, its test split (6,149) tests; torchvision's val split is not
# used.
# The recipe: AdamW at 1e-4, weight decay 0.05 (DeiT's training recipe's), cosine, clip 1, label smoothing 0.1 (at a
# small batch; the ViT paper fine-tuned Flowers-102 for 500 steps of SGD at batch 512), random-resized crops and mirror
# images, the weights' own normalization and test crop (0.9).
# NOT MEASURED: no pretrained weights nor Flowers-102 can be fetched on the machine this was written on (2026-12-06, a
# 2-core CPU, no GPU). "How to train your ViT" reports about 99% for ViT-S/16 AugReg at 384 px; expect less at 224.
out_dir = 'out-flowers102'
dataset = 'torchvision:Flowers102'
init_from = 'timm:vit_small_patch16_224.augreg_in21k_ft_in1k'
img_size = 224
store_size = 249
eval_interval = 500
log_interval = 20
eval_batch_size = 100

batch_size = 32
max_iters = 1000  # 31 epochs of the 1,020 pictures
optimizer = 'adamw'
learning_rate = 1e-4
warmup_iters = 100
min_lr = 1e-6
weight_decay = 0.05
grad_clip = 1.0
label_smoothing = 0.1
aug_rrc_scale = 0.35
aug_flip = True
