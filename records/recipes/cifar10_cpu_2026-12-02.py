# Pinned: config/cifar10_cpu.py as it was when records/README.md's CIFAR-10 lever table (800 steps, held out)
# started from (commit 7c43f60, 2026-12-02): a cls token, learned positions, a cosine decay. records/levers.py and
# records/transfer.py run this file, so that their baseline rows come back from today's code.
out_dir = 'out-cifar10-cpu'
dataset = 'cifar10'
eval_interval = 3000  # evaluate once, at the end: 9 views of the 10,000 test pictures cost ~3 min here
log_interval = 100
plot = False
eval_batch_size = 1000

n_layer = 4
n_head = 2
n_embd = 128
patch_size = 4

batch_size = 128
max_iters = 3000
optimizer = 'muon'
muon_lr = 0.02
learning_rate = 2e-3  # AdamW's, for the embeddings, norms, biases and head
weight_decay = 0.0
warmup_iters = 100
min_lr = 1e-5
label_smoothing = 0.1
aug_crop = 4
aug_flip = True
tta_shift = 1  # the test pictures' predictions: the mean over each and its 8 one-pixel shifts
