# config/mnist_speedrun.py as it was from 2026-12-07 (3 layers, mean pooling, 9 test-time views): the recipe
# records/levers.py's mnist_speedrun_free suite starts from
out_dir = 'out-mnist-speedrun'
eval_interval = 1170  # evaluate once, at the end
log_interval = 468
plot = False

n_layer = 3  # not 4: with mean pooling a step 0.69x the 4-layer cls-token step
n_head = 2
n_embd = 64
patch_size = 7
pos_std = 1.0
qk_norm = True
pool = 'mean'  # 16 tokens, not 17: a step 0.92x, and +0.28 on the held-out split

dtype = 'float32'  # at these sizes bf16 autocast costs more in casts than it saves (bench.py)
batch_size = 128
max_iters = 1170  # 2.5 epochs of 468 batches
optimizer = 'muon'
muon_lr = 0.05
learning_rate = 4e-3  # AdamW's, for the embeddings, norms, biases and head
weight_decay = 0.0
warmup_iters = 100
min_lr = 0.0
lr_schedule = 'linear'  # to zero at the end
muon_momentum_warmup = 150  # Muon's momentum from 0.85 to 0.95 over the first 150 steps
aug_translate = 2.0
tta_shift = 1  # the test images' predictions: the mean over each and its one-pixel shifts
tta_views = 9  # the 3 x 3 neighbourhood: +0.08 on the held-out split over 5 views, about 2 s more
