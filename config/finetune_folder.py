# Your own photos, a few hundred of them in class folders, fine-tuned from torchvision's ViT-B/16
# (ImageNet-1k weights, fetched once into torch's cache) on one GPU:
# $ python train.py config/finetune_folder.py --data_dir=~/pets
# data_dir/train/<class>/*.jpg and data_dir/test/<class>/*.jpg (or val/), any size: each picture's shorter
# side resized to 224 and the centre cut out, normalized with ImageNet's mean and std, as the weights expect.
# NOT MEASURED (written 2026-12-01 on a 2-core CPU, with neither a GPU nor the pretrained weights). What was
# measured: torchvision's ViT-B/16 and its nanoViT import give the same logits to within 1e-4 (random weights,
# tests/test_pretrained.py), and, on the CPU, transfer within CIFAR-10 with a 0.8M-parameter ViT
# (records/README.md, "Fine-tuning on the CPU"): AdamW at 1e-3 fine-tuned best
# (74.3%, 3 seeds), 3e-4 and 1e-4 trailed by 1.6 and 6.8 points, layer_decay 0.75 and 0.5 by 1.4 and 3.9
# points more, Muon by 1.2: those are the knobs here. ViT-B/16 is 100 times that model; whether it wants a
# lower rate is not measured. Time and accuracy on a GPU: whoever runs this, write them here.
out_dir = 'out-finetune'
dataset = 'folder'
init_from = 'vit_b_16'  # ViT-B/16, IMAGENET1K_V1: 86M parameters at 224 x 224, 196 patches of 16 x 16
eval_interval = 100
log_interval = 10

batch_size = 32
max_iters = 500  # a few hundred pictures: tens of epochs
optimizer = 'adamw'
learning_rate = 1e-3
warmup_iters = 50
min_lr = 1e-6
weight_decay = 0.05
label_smoothing = 0.1
aug_crop = 16  # shifts of up to 16 pixels (one patch)
aug_flip = True
