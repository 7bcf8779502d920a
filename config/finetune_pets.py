# Oxford-IIIT Pet (37 breeds of cats and dogs; torchvision downloads it into data/, 800 MB) fine-tuned from timm's
# ViT-S/16 (AugReg, ImageNet-21k then 1k), on a GPU or, slowly, a CPU (pip install timm):
# $ python train.py config/finetune_pets.py
# Its trainval split (3,680 pictures) trains, its test split (3,669) tests.
# The recipe: AdamW at 1e-4, weight decay 0.05 (DeiT's training recipe's), cosine, clip 1, label smoothing 0.1 (at a
# small batch; the ViT paper fine-tuned Pets for 500 steps of SGD at batch 512), random-resized crops and mirror images,
# the weights' own normalization and test crop (0.9).
# NOT MEASURED: no pretrained weights nor the Pets files can be fetched on the machine this was written on (2026-12-06,
# a 2-core CPU, no GPU). "How to train your ViT" reports about 93-94% for ViT-S/16 AugReg at 384 px; expect less at 224.
out_dir = 'out-pets'
dataset = 'torchvision:OxfordIIITPet'
init_from = 'timm:vit_small_patch16_224.augreg_in21k_ft_in1k'
img_size = 224
store_size = 249
eval_interval = 500
log_interval = 20
eval_batch_size = 100

batch_size = 32
max_iters = 1500  # 13 epochs of the 3,680 pictures
optimizer = 'adamw'
learning_rate = 1e-4
warmup_iters = 150
min_lr = 1e-6
weight_decay = 0.05
grad_clip = 1.0
label_smoothing = 0.1
aug_rrc_scale = 0.35
aug_flip = True
