"""
Never lose a run: everything README's "Never lose a run" promises, one call each.
- claim_out_dir: one run per out_dir at a time, and a finished or stopped run never overwritten unasked
- save_checkpoint: a kill at any instant leaves the old checkpoint or the new one, never half of one
- load_checkpoint, load_model_state, load_optimizer_states: a checkpoint that does not fit is one line
- resume_conflicts, resume_changes: what a resume cannot carry on with, and what it carries on changed
- restart_metrics, append_metrics: metrics.jsonl holds each iteration once, across any number of resumes
- stop_if_diverged: a diverged model never replaces the last good checkpoint
- StopSignals: Ctrl-C and SIGTERM checkpoint and exit within one iteration
"""
import json
import math
import os
import signal
import socket
import time
from dataclasses import fields

import torch

from errors import die
from model import ViTConfig

# -----------------------------------------------------------------------------
# the out_dir


def claim_out_dir(out_dir, init_from, ckpt_path):
    """Create out_dir and hold its lock for as long as this process lives; refuse a second run in it, and a
    fresh start over a checkpoint. The operating system drops the lock when the process ends, however it
    ends, so a killed run never leaves it stuck. Returns the open lock file: the lock lasts while it is open."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        lock = open(os.path.join(out_dir, 'lock'), 'a+')
    except OSError as e:
        die(f"out_dir={out_dir!r} is not writable: {e.strerror}")
    try:
        if os.name == 'nt':
            import msvcrt
            msvcrt.locking(lock.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        die(f"out_dir={out_dir!r} is in use by another run ({lock.read().strip() or 'unknown process'}): "
            f"wait for it to finish, stop it, or choose another --out_dir", 2)
    if init_from != 'resume' and os.path.exists(ckpt_path):
        die(f"{ckpt_path} already holds a run; carry it on with --init_from=resume, or to start over delete "
            f"{out_dir} (or choose another --out_dir)", 2)
    try:
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        lock.flush()
    except OSError as e:
        die(f"out_dir={out_dir!r} is not writable: {e.strerror}")
    return lock

# -----------------------------------------------------------------------------
# checkpoints


def save_checkpoint(checkpoint, path):
    """Write path so that a kill at any instant leaves the old file or the new one, never half of one;
    if the disk refuses (full, gone), say so in one line, leaving the old file and no temporary one."""
    tmp_path = path + '.tmp'
    try:
        with open(tmp_path, 'wb') as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)  # atomic on POSIX and Windows
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        if os.path.lexists(tmp_path):
            os.remove(tmp_path)
        kept = f"{path} is left as it was" if os.path.exists(path) else "no checkpoint was kept"
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:200]
        die(f"could not write the checkpoint {tmp_path}: {reason}; {kept}")


def load_checkpoint(path, device, keys=('model', 'model_args')):
    """The checkpoint dict at path, holding at least keys, or one line saying why there is none to use."""
    if not os.path.isfile(path):
        die(f"no checkpoint at {path} (train one first, or point out_dir at the run's folder)")
    try:
        # weights_only: a checkpoint is tensors and plain types, nothing that runs code on load
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        die(f"{path} is not a readable checkpoint (truncated or corrupt?): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"[:300])
    if not isinstance(checkpoint, dict) or not {'model', 'model_args'} <= checkpoint.keys():
        die(f"{path} is not a nanoViT checkpoint (no 'model' and 'model_args' in it)")
    missing = [k for k in keys if k not in checkpoint]
    if missing:
        die(f"{path} lacks {', '.join(missing)}: saved by another version of nanoViT, or edited")
    return checkpoint


def saved_model_config(checkpoint, path):
    """The ViTConfig a checkpoint's model_args describe. A key it lacks predates that option, whose default is
    what the run had; a key this version lacks, or a value that cannot be, is one line."""
    args = checkpoint['model_args']
    known = {f.name for f in fields(ViTConfig)}
    unknown = sorted(set(args) - known) if isinstance(args, dict) else ['(not a dict)']
    if unknown:
        die(f"{path}: model_args hold {', '.join(unknown)}, which this version of nanoViT does not know")
    try:
        return ViTConfig(**args)
    except (TypeError, ValueError) as e:
        die(f"{path}: model_args describe no model this version can build: {e}")


def load_model_state(model, state_dict, path):
    """Load weights saved by train.py, naming every key that does not fit."""
    # a compiled model's state_dict has its keys under _orig_mod.
    state_dict = {k.removeprefix('_orig_mod.'): v for k, v in state_dict.items()}
    # runs saved before each pooling was a module of its own kept the cls token at the top (empty under 'mean')
    if 'cls_token' in state_dict:
        token = state_dict.pop('cls_token')
        if token.numel():
            state_dict['pool.token'] = token
    own = model.state_dict()
    problems = [f"missing {k}" for k in own.keys() - state_dict.keys()]
    problems += [f"unexpected {k}" for k in state_dict.keys() - own.keys()]
    problems += [f"{k} is {tuple(state_dict[k].shape)} in the checkpoint, {tuple(own[k].shape)} here"
                 for k in own.keys() & state_dict.keys() if own[k].shape != state_dict[k].shape]
    if problems:
        die(f"{path} does not fit this model: {'; '.join(sorted(problems)[:6])}"
            + (f" (and {len(problems) - 6} more)" if len(problems) > 6 else ""))
    model.load_state_dict(state_dict)


def load_optimizer_states(optimizers, states, path):
    """Load the optimizers' saved moments, after checking that every saved tensor has its parameter's shape
    (a fused kernel given a wrong shape crashes the process instead of raising). The hyperparameters (lr,
    betas, weight decay) stay this run's: a resume may change them."""
    if not isinstance(states, list) or len(states) != len(optimizers):
        die(f"{path} holds the state of {len(states) if isinstance(states, list) else 'an unknown number of'} "
            f"optimizer(s), this run has {len(optimizers)}")
    for optimizer, state in zip(optimizers, states):
        try:
            saved = [i for group in state['param_groups'] for i in group['params']]
            params = [p for group in optimizer.param_groups for p in group['params']]
            fits = len(saved) == len(params) and all(
                not torch.is_tensor(v) or v.dim() == 0 or v.shape == p.shape
                for i, p in zip(saved, params) for v in state['state'].get(i, {}).values())
        except (KeyError, TypeError, AttributeError):
            fits = False
        if not fits:
            die(f"{path}: the saved {type(optimizer).__name__} state does not fit this model's parameters")
        settings = [{k: v for k, v in group.items() if k != 'params'} for group in optimizer.param_groups]
        optimizer.load_state_dict(state)
        for group, own in zip(optimizer.param_groups, settings):
            group.update(own)

# -----------------------------------------------------------------------------
# resuming


RUN_KEYS = ('dataset', 'optimizer')  # a resume on other data, or with other optimizer moments, is another run


def resume_conflicts(checkpoint, config, classes):
    """[(name, the checkpoint's value, this run's)] for what a resume cannot carry on with besides the model:
    another dataset, optimizer, or classes."""
    conflicts = [(k, checkpoint['config'].get(k), config[k]) for k in RUN_KEYS if checkpoint['config'].get(k) != config[k]]
    if not conflicts and checkpoint['classes'] != classes:  # (other data has other classes: said once is enough)
        conflicts.append(('classes', checkpoint['classes'], classes))
    return conflicts


def resume_changes(checkpoint, config, world_size, defaults, n_train):
    """The notes a resume prints: every config key that changed, and how many processes, images per
    iteration and training pictures, if those changed. defaults: train.py's, for keys the checkpoint's run
    did not have yet."""
    saved = {**defaults, **checkpoint['config']}
    notes = [f"{k} {saved[k]!r} -> {v!r}" for k, v in config.items() if k != 'init_from' and saved[k] != v]
    if checkpoint.get('n_train', n_train) != n_train:
        notes.append(f"training pictures {checkpoint['n_train']} -> {n_train} (the batches are drawn anew)")
    processes = len(checkpoint['rng'])
    if processes != world_size:
        notes.append(f"processes {processes} -> {world_size} (dropout draws new numbers)")
    images = saved['batch_size'] * saved['gradient_accumulation_steps'] * processes
    now = config['batch_size'] * config['gradient_accumulation_steps'] * world_size
    if images != now:
        notes.append(f"images per iteration {images} -> {now}")
    return notes

# -----------------------------------------------------------------------------
# metrics.jsonl: one JSON record a line


def read_metrics(path):
    """The records of a metrics.jsonl. A run killed while writing (a full disk, a power cut) can leave
    its last line half written: that line is dropped, with a note."""
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            lines = [line for line in f if line.strip()]
    except OSError as e:
        die(f"could not read {path}: {e.strerror}")
    records = []
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            whole = isinstance(record, dict) and isinstance(record.get('iter'), int)
        except json.JSONDecodeError:
            whole = False
        if whole:
            records.append(record)
        elif n < len(lines):
            die(f"{path}, line {n}: not a metrics record; the file was edited or is not a metrics.jsonl")
        else:
            print(f"note: {path} ends in a half-written line (the run was killed while writing it); dropped")
    return records


def write_metrics(path, records, mode):
    """Append records to metrics.jsonl (mode 'a'), or write it anew ('w'); a full disk is one line, not a traceback."""
    try:
        with open(path, mode) as f:
            f.writelines(json.dumps(r) + '\n' for r in records)
    except OSError as e:
        die(f"could not write {path}: {e.strerror or e}; the last checkpoint is kept, resume when there is room")


def restart_metrics(path, iter_num):
    """Start metrics.jsonl for a run at iter_num: a resumed run logs again the steps after its checkpoint, so
    what the interrupted run logged of them goes; a fresh run starts an empty file."""
    kept = [r for r in read_metrics(path) if r['iter'] <= iter_num] if iter_num and os.path.exists(path) else []
    write_metrics(path, kept, 'w')

# -----------------------------------------------------------------------------
# guards and signals


def stop_if_diverged(loss, what, iter_num, ckpt_path, advice, checkpoint_loss=None):
    """Stop before a diverged model can overwrite the last good checkpoint: a loss that overflowed, or a val
    loss more than twice the checkpoint's plus 0.5 (a resume at learning_rate=100 took one from 0.5 to 880,
    finite: no honest stretch of training makes such a jump)."""
    limit = math.inf if checkpoint_loss is None else 2 * checkpoint_loss + 0.5
    if not math.isfinite(loss) or loss > limit:
        than = f", the checkpoint's {checkpoint_loss:.4g}" if limit < math.inf else ""
        die(f"{what} is {loss:.4g} at iter {iter_num}{than}: training diverged. {advice}. {ckpt_path} is left as it was.")


class StopSignals:
    """Ctrl-C and SIGTERM (Colab's stop button, a cluster's preemption) ask the run to stop: train.py asks
    requested() after every iteration, then checkpoints and exits. A second signal while it stops is
    noted, not obeyed: the checkpoint being written is what the first one asked for (kill -9 abandons it)."""

    def __init__(self, verbose, group=None):
        self.signum = 0
        self.verbose = verbose  # one process of a run speaks
        self.group = group  # under DDP: the (CPU) process group through which every process hears of a stop
        signal.signal(signal.SIGINT, self.catch)
        signal.signal(signal.SIGTERM, self.catch)

    def catch(self, signum, frame):
        if self.verbose:
            print(f"\n{signal.Signals(signum).name}: " + ("already stopping, the checkpoint is being written"
                  if self.signum else "stopping after this iteration, with a checkpoint"), flush=True)
        self.signum = self.signum or signum

    def requested(self):
        """The signal number that asked for a stop, 0 if none; under DDP the same answer on every process,
        so that all of them stop after the same iteration."""
        if self.group is None:
            return self.signum
        flag = torch.tensor([self.signum])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self.group)
        return int(flag.item())
