"""
Never lose a run: one run per out_dir (claim_out_dir), no diverged model saved over a good checkpoint
(stop_if_diverged), Ctrl-C and SIGTERM checkpointing within one iteration (StopSignals). checkpoint.py writes them.
"""
import atexit
import math
import os
import shlex
import shutil
import signal
import socket
import sys
import time

import torch

from support.errors import die
from support.locks import hold

def claim_out_dir(out_dir, init_from, ckpt_path):
    """Create out_dir and hold its lock while this process lives (locks.py: a killed run never leaves it stuck); refuse
    a second run in it, a fresh start over a checkpoint, and a resume without one. A run that stops before its first
    checkpoint leaves nothing behind. Returns the open lock file, held while it is open."""
    if init_from == 'resume' and not os.path.isfile(ckpt_path):  # before anything in out_dir is touched
        die(f"no checkpoint at {ckpt_path} to resume (train one first, or point out_dir at the run's folder)")
    existed = os.path.isdir(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
        lock = open(os.path.join(out_dir, 'lock'), 'a+')
        if not hold(lock, wait=False):
            lock.seek(0)
            die(f"out_dir={out_dir!r} is in use by another run ({lock.read().strip() or 'unknown process'}): "
                f"wait for it to finish, stop it, or choose another --out_dir", 2)
        # from here on the folder is this run's: what it writes is cleared if it stops before its first checkpoint
        atexit.register(forget_a_failed_start, out_dir, ckpt_path, existed)
        if init_from != 'resume' and os.path.exists(ckpt_path):
            die(f"{ckpt_path} already holds a run; carry it on with --init_from=resume, or to start over delete "
                f"{out_dir} (or choose another --out_dir)", 2)
        lock.truncate(0)  # opened to append: what follows is written at its end, now its start
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        lock.flush()
    except OSError as e:
        die(f"out_dir={out_dir!r} is not writable: {e.strerror}")
    return lock

def forget_a_failed_start(out_dir, ckpt_path, existed):
    """What a run that ends without a checkpoint wrote into out_dir (a run that ends well leaves by os._exit)."""
    if os.path.exists(ckpt_path):
        return
    for name in ('lock', 'metrics.jsonl', 'run.json', 'log.txt', 'curves.png'):
        if os.path.isfile(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    if not existed and os.path.isdir(out_dir) and not os.listdir(out_dir):
        os.rmdir(out_dir)

def stop_if_diverged(loss, iter_num, ckpt_path, checkpoint_loss, learning_rate, dtype, scaler):
    """Stop before a diverged model can overwrite the last good checkpoint: a training loss that overflowed, or more
    than twice the checkpoint's plus 0.5 (a resume at learning_rate=100 took one from 0.5 to 880, finite: no honest
    stretch of training makes such a jump), or fp16 gradients that overflow at every step. The test split decides
    nothing: it is for the final figure."""
    if not math.isfinite(loss) or loss > 2 * checkpoint_loss + 0.5:
        than = f", the checkpoint's {checkpoint_loss:.4g}" if math.isfinite(checkpoint_loss) else ""
        die(f"the training loss is {loss:.4g} at iter {iter_num}{than}: training diverged. Lower learning_rate (now "
            f"{learning_rate:g}){' or use dtype=float32' * (dtype != 'float32')}. {ckpt_path} is left as it was.")
    if scaler.is_enabled() and scaler.get_scale() < 1.0:
        die(f"GradScaler's scale fell to {scaler.get_scale():g} at iter {iter_num}: fp16 gradients overflow at "
            f"every step. Lower learning_rate or use dtype=bfloat16/float32. {ckpt_path} is left as it was.")

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

def resume_command(ddp, world_size):
    """The command that carries this run on, typed where it was started: the script's path as it was given."""
    args = shlex.join([sys.argv[0], *(a for a in sys.argv[1:] if not a.startswith('--init_from='))])
    if not ddp:
        return f"python {args} --init_from=resume"
    if int(os.environ['LOCAL_WORLD_SIZE']) == world_size:
        return f"torchrun --standalone --nproc_per_node={world_size} {args} --init_from=resume"
    return f"the same torchrun command as this run's ({world_size} processes), with {args} --init_from=resume"

def check_free_space(out_dir, checkpoint_bytes):
    """Stop at start, not at the first save, when out_dir's disk cannot hold a checkpoint beside the old one."""
    free = shutil.disk_usage(out_dir).free
    if free < checkpoint_bytes * 1.1:
        die(f"out_dir={out_dir!r} has {free / 2 ** 20:.0f} MiB free on its disk, and a checkpoint of this run takes "
            f"about {checkpoint_bytes / 2 ** 20:.0f} MiB: free some space, or choose another --out_dir")

def leave(code, ddp, run_log=None):
    """Exit with code, everything written; under torchrun every process together. The interpreter's teardown is
    skipped: torch's takes a second or two, and with gloo it can abort (std::terminate) in torch's C++ threads
    after all the work is done, so that torchrun would report a failed run."""
    if run_log:
        run_log.close()
    if ddp:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
