# Pinned: config/cifar10_cpu.py as it was when records/README.md's float32 CIFAR-10 lever table (800 steps, held out)
# started from (commit 5b349a9, 2026-12-06). records/levers.py --suite=cifar10_fp32 runs this file.
out_dir = 'out-cifar10-cpu'
dataset = 'cifar10'
eval_interval = 3600  # once, at the end: 9 views of the 10,000 test pictures (most of the time outside the steps)
log_interval = 100
plot = False
eval_batch_size = 1000

n_layer = 4
n_head = 2
n_embd = 128
patch_size = 4
pool = 'mean'  # the mean of the patch tokens (+1.4 points over a cls token on the held-out split)
pos_embd = 'sincos'  # fixed 2-D sin-cos positions (+1.8 points over learned ones)

batch_size = 128
max_iters = 3600
optimizer = 'muon'
muon_lr = 0.02
muon_momentum_warmup = 300  # Muon's momentum from 0.85 to 0.95 over the first 300 steps (+2.3 points)
learning_rate = 2e-3  # AdamW's, for the embeddings, norms, biases and head
weight_decay = 0.0
warmup_iters = 100
lr_schedule = 'linear'  # to zero at the end: +1.8 points over the cosine on the held-out split
min_lr = 0.0
label_smoothing = 0.1
aug_crop = 4
aug_flip = True
tta_shift = 1  # the test pictures' predictions: the mean over each and its 8 one-pixel shifts
