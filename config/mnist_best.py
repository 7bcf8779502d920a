# The most accurate recipe we measured: a 6-layer, 256-wide ViT (4.7M parameters) on 4x4
# patches, 60 epochs with random affine augmentation, label smoothing and dropout.
# $ python train.py config/mnist_best.py
# Measured (the final model, official 10,000-image test split, no early stopping):
#   99.63% (this file, seed 1337); the same recipe with milder augmentation (3 -> 2 px,
#   15 -> 10 deg, 0.15 -> 0.1 zoom) gave 99.55% and 99.52% for seeds 1337 and 2.
#   One NVIDIA H200, bf16, compiled, 2026-11-28: 5 min wall with three such runs sharing the GPU;
#   5.1 PFLOP of training. Far beyond a 2-core CPU (hours); short of the 99.70% we aimed at. That run's log
#   was not kept (runs keep log.txt and run.json from 2026-12-06): no GPU since to run it again.
out_dir = 'out-mnist-best'
eval_interval = 2340  # every 10 epochs
log_interval = 500

n_layer = 6
n_head = 8
n_embd = 256
patch_size = 4
pool = 'mean'
pos_embd = 'sincos'
dropout = 0.1

batch_size = 256
max_iters = 14040  # 60 epochs of 234 batches
learning_rate = 1e-3
warmup_iters = 700
min_lr = 1e-5
weight_decay = 0.05
label_smoothing = 0.1
aug_translate = 3.0
aug_rotate = 15.0
aug_scale = 0.15
