# The least wall time to 99% test accuracy on a 2-core CPU: a 4-layer, 64-wide ViT (2 heads) on 7x7
# patches (16 tokens an image, 0.21M parameters), Muon for the blocks' matrices (its momentum warmed up),
# 2.5 epochs at batch 128 with a linear decay to zero, float32, random shifts of up to 2 pixels, one
# evaluation at the very end, on the mean logits of each test image and its 4 one-pixel shifts up, down, left
# and right (test-time augmentation, timed with the rest), no plots. A fixed schedule: nothing stops early.
# $ python train.py config/mnist_speedrun.py --data_dir=../shared/mnist
# Measured on a 2-core AMD EPYC with AVX-512 BF16 (lscpu: avx512_bf16; float32 here all the same), 2026-12-06, in
# three rounds beside the same recipe with 9 test-time views (the reference step, ../shared/tools/ref_step.py, read
# 34.8 to 53.0 ms around them): 99.01% mean test accuracy (99.08, 99.00, 98.94 for seeds 1337, 2, 3; seed 3 below
# 99) in 59 s, 57 s and 70 s mean wall time for the whole process (55, 57, 65 s; 55, 52, 63 s; 77, 68, 65 s): 62 s
# over all nine, 3.2 TFLOP of training. The 9-view recipe, timed beside it: 99.10% (99.15, 99.07, 99.08) in 71 s,
# 62 s and 75 s mean (69 s over nine): 0.89x its wall time, for 0.09 points of test accuracy. On the held-out split
# the 5 views scored 98.54% against the 9 views' 98.65% (records/README.md); the runs in
# records/runs/speedrun-2026-12-06/round*. Under 60 s at this CPU's faster moments only: not the 60 s goal.
# Later that day the evaluation went to passes of 128 pictures (train.py's default since), not 500: timed in two more
# rounds beside 500 (reference step 35.2 to 39.1 ms, yet 45-58 ms a step: a slower hour), the same accuracies, the
# evaluation 4.7 s against 7.2 s mean (0.66x), the whole process 69.5 s against 71.8 s mean (0.97x; 73.6, 75.3, 72.7 s
# and 65.4, 69.2, 60.5 s against 72.1, 73.4, 74.1 s and 65.9, 74.0, 71.5 s): records/runs/speedrun-2026-12-06/round4-*
# and round5-*.
out_dir = 'out-mnist-speedrun'
eval_interval = 1170  # evaluate once, at the end
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
tta_views = 5  # up, down, left and right (not the diagonals): 5/9 of the evaluation, 0.87x the run's time
