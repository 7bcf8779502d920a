"""
Locks that the operating system drops when their process ends, however it ends (a crash, kill -9), so a
lock is never left stuck: flock on POSIX, msvcrt.locking on Windows.
"""
import os
import time

def hold(f, wait=True):
    """Lock the open file f for this process; True once held. wait=False: False at once if another process holds it."""
    if os.name == 'nt':
        import msvcrt
        f.seek(0)  # msvcrt locks bytes from the file's position: every process the same first byte
        while True:
            try:
                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
                return True
            except OSError:
                if not wait:
                    return False
                time.sleep(0.1)
    import fcntl
    try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False
