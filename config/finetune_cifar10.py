# CIFAR-10 at 224 x 224 from torchvision's ViT-B/16 (ImageNet-1k weights), on one GPU:
# $ python train.py config/finetune_cifar10.py
# The 32 x 32 pictures stay 32 x 32 on the device and each batch is resized to the model's 224 (bilinear).
# The optimizer: AdamW at 1e-4, a tenth of a rate that trains from scratch, with the weight decay of DeiT's training
# recipe (0.05) and a cosine decay (the ViT paper fine-tuned with SGD at 0.001-0.03 at batch 512 and 10k steps for
# CIFAR), clip 1. The ViT paper reports about 98% for ViT-B/16 pre-trained on ImageNet-21k and fine-tuned at 384; the
# weights torchvision has are ImageNet-1k's, so expect less (timm's AugReg ViT-B/16, --init_from=timm:
# vit_base_patch16_224.augreg2_in21k_ft_in1k, are ImageNet-21k's).
# NOT MEASURED (written 2026-12-06 on a 2-core CPU, with neither a GPU nor the pretrained weights): whoever runs it,
# write the time and the accuracy here.
out_dir = 'out-finetune-cifar10'
dataset = 'cifar10'
init_from = 'vit_b_16'
eval_interval = 1000
log_interval = 50
eval_batch_size = 250

batch_size = 128
max_iters = 5000  # 12.8 epochs of 390 batches
optimizer = 'adamw'
learning_rate = 1e-4
warmup_iters = 500
min_lr = 1e-6
weight_decay = 0.05
grad_clip = 1.0
label_smoothing = 0.1
aug_crop = 4  # in the 32 x 32 pictures, before the resize
aug_flip = True
