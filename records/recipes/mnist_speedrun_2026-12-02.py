# Pinned: config/mnist_speedrun.py as it was when records/README.md's MNIST lever table (468 steps, held out)
# started from (commit 0d43157, 2026-12-02). records/levers.py runs this file, not today's config.
out_dir = 'out-mnist-speedrun'
eval_interval = 1404  # evaluate once, at the end
log_interval = 468
plot = False

n_layer = 4
n_head = 2
n_embd = 64
patch_size = 7
pos_std = 1.0
qk_norm = True

dtype = 'float32'  # at these sizes bf16 autocast costs more in casts than it saves (bench.py)
batch_size = 128
max_iters = 1404  # 3 epochs of 468 batches
optimizer = 'muon'
muon_lr = 0.05
learning_rate = 4e-3  # AdamW's, for the embeddings, norms, biases and head
weight_decay = 0.0
warmup_iters = 100
min_lr = 1e-5
aug_translate = 2.0
tta_shift = 1  # the test images' predictions: the mean over each and its 8 one-pixel shifts
