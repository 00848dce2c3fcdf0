"""Run `python cleanil/<script>.py <args>` as a process forked from a server that has already imported torch.

A fresh interpreter spends ~3 s of CPU importing torch before a script reads its first argument; the suite starts a
few hundred scripts (most of them the bad-input cases, which exit within a second of that), so a quarter of its time
went to imports. multiprocessing's forkserver imports the heavy packages once per pytest worker and forks a clean
process per run: the script still runs as __main__ in its own process, with its own argv, cwd, environment, stdout,
stderr and exit status, as from the command line. This module stays light: the forked child imports it.
"""

import atexit
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

# what every script imports before its first line of its own; mujoco stays out (it reads MUJOCO_GL when imported)
PRELOAD = ["numpy", "torch", "gymnasium", "tyro", "tqdm"]


def _run_as_main(script, args, cwd, env, stdout_path, stderr_path):
    """The child: the interpreter's own steps for `python script args`, then exit with the script's status."""
    for fd, path in ((1, stdout_path), (2, stderr_path)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(script))
    status = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exit_request:  # sys.exit(...): None -> 0, an int -> itself, anything else printed -> 1
        code = exit_request.code
        if code is None or isinstance(code, int):
            status = code or 0
        else:
            print(code, file=sys.stderr)
            status = 1
    except BaseException:  # as the interpreter does: the traceback on stderr, status 1
        traceback.print_exc()
        status = 1
    atexit._run_exitfuncs()  # multiprocessing's child would skip them; the interpreter runs them
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


_context = None


def run(script, args, cwd, env, timeout):
    """subprocess.run([python, script, *args], capture_output=True, text=True, ...) with the imports done already."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    paths = []
    for suffix in (".stdout", ".stderr"):
        fd, path = tempfile.mkstemp(suffix=suffix)
        os.close(fd)
        paths.append(path)
    command = [sys.executable, script, *args]
    try:
        child = _context.Process(target=_run_as_main, args=(script, args, str(cwd), env, *paths))
        child.start()
        child.join(timeout)
        if child.is_alive():
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(command, timeout)
        stdout, stderr = (Path(path).read_text() for path in paths)
    finally:
        for path in paths:
            os.remove(path)
    return subprocess.CompletedProcess(command, child.exitcode, stdout, stderr)
