"""Child side of the code sandbox: a trusted init, and the runner of the untrusted program.

The parent (r1jax/rewards/sandbox.py) starts `python -I -S -c <this file's text> <config>`
inside nsjail (or bare, in mode "none"). This process is the trusted init (pid 1 of the
sandbox's pid namespace under nsjail): it applies the rlimits, forks the runner, reaps every
process that ends up as its child, and when the runner ends kills every other process of the
namespace (kill(-1) from pid 1 reaches exactly those), then exits with the runner's status
(128 + signal when it was killed). Signals from inside the namespace cannot reach pid 1 and
it holds no pipe, so nothing the program does can keep the sandbox alive or hang the parent.

The runner executes the submission, either as a program ("run": stdin -> stdout) or as a
module that answers calls ("serve"). Calls come from the parent as length-prefixed frames
holding a Python literal (name, args, kwargs), written by the trusted parent; answers go back
as frames of JSON: ["ready"], ["load_error", msg], ["ok", value], ["err", msg], where a value
is JSON with tagged objects for the types JSON lacks ({"tuple": [...]}, {"set": [...]},
{"frozenset": [...]}, {"dict": [[k, v], ...]}, {"bytes": "latin-1 text"},
{"complex": [re, im]}). Everything the runner sends is untrusted (the submission shares its
process and can rewrite it); the parent caps, parses and checks it.

Standard library only, and little of it: this runs once per test, so start-up time counts.
"""

import os
import sys


def _read_frame(fd):
  head = b""
  while len(head) < 4:
    b = os.read(fd, 4 - len(head))
    if not b:
      return None
    head += b
  n = int.from_bytes(head, "big")
  buf = bytearray()
  while len(buf) < n:
    b = os.read(fd, min(1 << 20, n - len(buf)))
    if not b:
      return None
    buf += b
  return bytes(buf)


def _write_frame(fd, data):
  data = len(data).to_bytes(4, "big") + data
  while data:
    data = data[os.write(fd, data):]


def _encode(v, quote, depth=0):
  """Tagged JSON of a plain value (exact types only: subclasses and other objects raise)."""
  if depth > 100:
    raise ValueError("nested too deeply")
  t = type(v)
  if v is None:
    return "null"
  if t is bool:
    return "true" if v else "false"
  if t is int:
    return str(v)
  if t is float:
    r = repr(v)
    return {"inf": "Infinity", "-inf": "-Infinity", "nan": "NaN"}.get(r, r)
  if t is str:
    return quote(v)
  d = depth + 1
  if t is list:
    return "[" + ",".join(_encode(x, quote, d) for x in v) + "]"
  if t in (tuple, set, frozenset):
    return '{"%s":[' % t.__name__ + ",".join(_encode(x, quote, d) for x in v) + "]}"
  if t is dict:
    return '{"dict":[' + ",".join("[%s,%s]" % (_encode(k, quote, d), _encode(x, quote, d))
                                   for k, x in v.items()) + "]}"
  if t is bytes:
    return '{"bytes":' + quote(v.decode("latin-1")) + "}"
  if t is complex:
    return '{"complex":[%s,%s]}' % (_encode(v.real, quote, d), _encode(v.imag, quote, d))
  raise TypeError("a %s is not a plain value" % t.__name__)


def _serve(cfg, src):
  from _json import encode_basestring_ascii as quote
  res, ctl = cfg["res"], cfg["ctl"]
  lit = {"__builtins__": {}, "set": set, "frozenset": frozenset}
  wr, rd, tn, enc = _write_frame, _read_frame, type, _encode

  def send(kind, body):
    wr(res, ('["%s",%s]' % (kind, body)).encode())

  import builtins
  g = {"__name__": "__solution__", "__builtins__": builtins}
  try:
    exec(compile(src, "<solution>", "exec"), g)
  except BaseException as e:  # noqa: B036  (SystemExit and KeyboardInterrupt included)
    send("load_error", quote("%s: %s" % (tn(e).__name__, str(e)[:300])))
    return
  send("ready", "null")
  while True:
    req = rd(ctl)
    if req is None:
      return
    try:
      name, args, kwargs = eval(req.decode(), lit)  # a literal written by the parent
      parts = name.split(".")
      fn = g[parts[0]]
      for i, part in enumerate(parts[1:]):
        if i == 0 and isinstance(fn, type):
          fn = fn()  # "Solution.method": LeetCode-style class
        fn = getattr(fn, part)
      value = fn(*args, **kwargs)
      try:
        kind, body = "ok", enc(value, quote)
      except BaseException as e:  # noqa: B036
        kind, body = "err", quote("unrepresentable result: %s" % str(e)[:100])
    except BaseException as e:  # noqa: B036
      kind, body = "err", quote("%s: %s" % (tn(e).__name__, str(e)[:300]))
    send(kind, body)


def _runner(cfg):
  """The untrusted part: read the submission, run it."""
  import _signal  # not `signal`: its enum import costs start-up time
  _signal.signal(2, _signal.SIG_DFL)  # SIGINT
  src = _read_frame(cfg["ctl"])
  if src is None:
    os._exit(70)
  src = src.decode("utf-8", "replace")
  if cfg["mode"] == "serve":
    _serve(cfg, src)
    return
  os.close(cfg["ctl"])
  os.close(cfg["res"])
  import builtins
  exec(compile(src, "<solution>", "exec"), {"__name__": "__main__", "__builtins__": builtins})


def _init(cfg):
  import _signal
  import resource
  _signal.signal(2, _signal.SIG_IGN)  # SIGINT
  for name, soft, hard in cfg["rlimits"]:
    resource.setrlimit(getattr(resource, name), (soft, hard))
  if cfg["cwd"]:
    os.chdir(cfg["cwd"])
  pid = os.fork()
  if pid == 0:
    try:
      _runner(cfg)
      code = 0
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: B036
      import traceback
      traceback.print_exc()
      code = 1
    try:
      sys.stdout.flush()
    except BaseException:  # noqa: B036
      pass
    os._exit(code & 0xFF)
  # Init holds no pipe: the parent sees EOF as soon as the runner and its children are gone.
  for fd in (0, 1, cfg["ctl"], cfg["res"]):
    try:
      os.close(fd)
    except OSError:
      pass
  status = None
  while status is None:
    try:
      p, st = os.waitpid(-1, 0)
    except ChildProcessError:
      break
    if p == pid:
      status = st
  if cfg["pid1"]:
    try:
      os.kill(-1, 9)  # SIGKILL, as pid 1: every other process of the namespace
    except OSError:
      pass
    while True:
      try:
        os.waitpid(-1, 0)
      except ChildProcessError:
        break
  if status is None:
    os._exit(125)
  if os.WIFSIGNALED(status):
    os._exit(128 + os.WTERMSIG(status))
  os._exit(os.WEXITSTATUS(status))


if __name__ == "__main__":
  _init(eval(sys.argv[1], {"__builtins__": {}, "true": True, "false": False, "null": None}))
