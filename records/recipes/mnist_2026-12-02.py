# Pinned: config/mnist.py as it was when records/README.md's config/mnist.py lever table started (2026-12-02).
out_dir = 'out-mnist'
eval_interval = 250
log_interval = 50

n_layer = 4
n_head = 4
n_embd = 768
patch_size = 4
dropout = 0.0

batch_size = 32
max_iters = 1000
learning_rate = 3e-4
warmup_iters = 100
min_lr = 1e-5
weight_decay = 0.05
pos_std = 1.0
qk_norm = True
