"""ctrps: a Python client of a ctrps parameter-server cluster, and scoring
with exported models in numpy (clients/python/README.md).

    import ctrps
    with ctrps.Client("cluster.ini") as c:
        found, rows = c.lookup("emb", [ctrps.fid("C1", "68fd1e64")])
    m = ctrps.model.load("export-dir")
    p = m.predict(open("test.tsv", "rb"))
"""

from . import config, keys, model, nn, parse
from .client import Client, CtrpsError
from .config import ConfigError
from .keys import fid, slot_id
from .model import ExportError
from .parse import ParseError

__version__ = "0.1.0"

__all__ = ["Client", "CtrpsError", "ConfigError", "ExportError", "ParseError", "config", "fid",
           "keys", "model", "nn", "parse", "slot_id"]
