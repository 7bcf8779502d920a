# CIFAR-10 on one GPU (T4 class or better): the accuracy recipe, ViT-Lite-7/4's shape (7 layers,
# 4 heads, 256 wide, MLP ratio 2, 4x4 patches: 3.7M parameters) trained for 200 epochs with random
# crops, mirror images and label smoothing. CIFAR-10 downloads into data/ on the first run.
# $ python train.py config/cifar10.py
# NOT MEASURED YET (written 2026-11-28, on a machine without a GPU). ViT-Lite-7/4 reached
# 91.4% in the CCT paper with AutoAugment, which nanoViT does not have; expect less until someone
# with a GPU measures this file and writes the result here. On the 2-core CPU, config/cifar10_cpu.py.
out_dir = 'out-cifar10'
dataset = 'cifar10'
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
