# CIFAR-100 on one GPU (T4 class or better): config/cifar10.py's accuracy recipe (ViT-Lite-7/4's shape: 7 layers,
# 4 heads, 256 wide, MLP ratio 2, 4x4 patches, 3.7M parameters, 200 epochs of random crops, mirror images and label
# smoothing) on the 100 classes. CIFAR-100 downloads into data/ (160 MB) on the first run.
# $ python train.py config/cifar100.py
# NOT MEASURED: no GPU and no CIFAR-100 files on the machine this was written on (2026-12-06). ViT-Lite-7/4 reached
# 69.5% in the CCT paper with AutoAugment, which nanoViT does not have: expect less. Whoever runs it, write the result
# here.
out_dir = 'out-cifar100'
dataset = 'cifar100'
eval_interval = 3900  # every 10 epochs
log_interval = 100

n_layer = 7
n_head = 4
n_embd = 256
mlp_ratio = 2.0
patch_size = 4
dropout = 0.1

batch_size = 128
max_iters = 78000  # 200 epochs of 390 batches
learning_rate = 1e-3
warmup_iters = 1950  # 5 epochs
min_lr = 1e-5
weight_decay = 0.05
label_smoothing = 0.1
aug_crop = 4
aug_flip = True
