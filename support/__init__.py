"""
What train.py, sample.py, bench.py and prepare.py lean on, one theme a module. Read model.py, train.py and data.py
first; come here for how a promise is kept.
  checkpoint.py  what a run saves, and where it starts: from scratch, its checkpoint, or a source (Start)
  pretrained.py  fine-tuning sources: torchvision's and timm's ViTs, and other nanoViT runs
  safety.py      the run's folder, divergence, Ctrl-C and SIGTERM
  runlog.py      what a run writes beside its checkpoint: metrics, its log, where it came from
  optimizer.py   AdamW and Muon, and which parameter goes where
  device.py      the device, the dtype, torch.compile, peak FLOP/s, what the processes share
  rules.py       the rules a config value must meet
  pictures.py    picture files: reading one, finding them in a folder
  locks.py       locks the operating system drops with their process
  errors.py      one-line errors, and optional packages
"""
