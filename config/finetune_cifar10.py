# CIFAR-10 at 224 x 224 from torchvision's ViT-B/16 (ImageNet-1k weights), on one GPU:
# $ python train.py config/finetune_cifar10.py
# The 32 x 32 pictures stay 32 x 32 on the device and each batch is resized to the model's 224 (bilinear).
# The ViT paper reports about 98% for ViT-B/16 pre-trained on ImageNet-21k and fine-tuned at 384; the
# weights a user can fetch through torchvision are ImageNet-1k's, so expect less.
# NOT MEASURED (written 2026-12-01 on a 2-core CPU, with neither a GPU nor the pretrained weights): whoever
# runs it, write the time and the accuracy here. The knobs follow the CPU transfer measurement with a
# 0.8M-parameter ViT (records/README.md, "Fine-tuning on the CPU": AdamW at 1e-3 best; lower rates and layer
# decay behind); whether ViT-B/16 wants a lower rate is not measured.
out_dir = 'out-finetune-cifar10'
dataset = 'cifar10'
init_from = 'vit_b_16'
eval_interval = 1000
log_interval = 50
eval_batch_size = 250

batch_size = 128
max_iters = 5000  # 12.8 epochs of 390 batches
optimizer = 'adamw'
learning_rate = 1e-3
warmup_iters = 500
min_lr = 1e-6
weight_decay = 0.05
label_smoothing = 0.1
aug_crop = 4  # in the 32 x 32 pictures, before the resize
aug_flip = True
