"""Finding the protobuf module generated from proto/ctrps.proto.

The build generates it (clients/python/meson.build runs `protoc
--python_out`), so it lives in the build directory, not in the source tree.
It is looked up, first found wins, as:
  1. $CTRPS_PROTO_PY: the generated ctrps_pb2.py, or a directory holding it;
  2. ctrps_pb2.py next to this package (clients/python/ctrps/);
  3. $CTRPS_BUILD_ROOT/clients/python/ctrps_pb2.py;
  4. <repository>/build/clients/python/ctrps_pb2.py, the default build dir.
It is loaded under the private name ctrps._ctrps_pb2, once per process.
"""

import importlib.util
import os
import sys

_NAME = "ctrps._ctrps_pb2"
_FILE = "ctrps_pb2.py"


def candidates():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.normpath(os.path.join(here, "..", "..", ".."))
    out = []
    env = os.environ.get("CTRPS_PROTO_PY")
    if env:
        out.append(os.path.join(env, _FILE) if os.path.isdir(env) else env)
    out.append(os.path.join(here, _FILE))
    root = os.environ.get("CTRPS_BUILD_ROOT")
    if root:
        out.append(os.path.join(root, "clients", "python", _FILE))
    out.append(os.path.join(repo, "build", "clients", "python", _FILE))
    return out


def load():
    """The generated module; ImportError naming every place looked at."""
    mod = sys.modules.get(_NAME)
    if mod is not None:
        return mod
    tried = candidates()
    for path in tried:
        if os.path.isfile(path):
            spec = importlib.util.spec_from_file_location(_NAME, path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[_NAME] = mod
            try:
                spec.loader.exec_module(mod)
            except BaseException:
                del sys.modules[_NAME]
                raise
            return mod
    raise ImportError(
        "ctrps: the protobuf module generated from proto/ctrps.proto was not found; build it "
        "with `meson setup build && ninja -C build` (needs protoc: apt-get install "
        "protobuf-compiler python3-protobuf), or run `protoc --proto_path=proto "
        "--python_out=DIR proto/ctrps.proto` and set CTRPS_PROTO_PY=DIR. Looked at: "
        + ", ".join(tried))
