"""
What train.py, sample.py and bench.py lean on, one theme a module. Read model.py and train.py first; come
here for how a promise is kept.
  checkpoint.py  what a run saves, and where it starts: from scratch, its checkpoint, or a source (Start)
  pretrained.py  fine-tuning sources: torchvision's ViTs and other nanoViT runs
  safety.py      the run's folder and its metrics file, divergence, Ctrl-C and SIGTERM
  optimizer.py   AdamW and Muon, and which parameter goes where
  device.py      the device, the dtype, torch.compile, the attention kernel, peak FLOP/s, RNG states
  rules.py       the rules a config value must meet
  store.py       the picture store: decoded pictures in one memory-mapped file per split
  pictures.py    picture files: reading one, finding them in a folder, decoding many in parallel
  torchvision_errors.py  why a torchvision dataset would not load: the file at fault
  locks.py       locks the operating system drops with their process
  errors.py      one-line errors
"""
