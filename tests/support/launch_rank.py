"""One rank of a job started by a launcher test: ``python launch_rank.py CONFIG_JSON``.

It calls the legacy ``distutils.setup`` with the config, runs collectives through the
facade and the object API, and prints one JSON line with what it saw.
"""

import json
import os
import socket
import sys

import distcomm
from distcomm import distutils

config = json.loads(sys.argv[1])
distutils.setup(config)
comm = distcomm.get_communicator()
report = {
    "rank": distutils.get_rank(),
    "world_size": distutils.get_world_size(),
    "local_rank": comm.local_rank,
    "backend": comm.backend,
    "written_back": {key: config.get(key) for key in ("init_method", "rank", "local_rank")},
    "sum": distutils.all_reduce(distutils.get_rank() + 1),
    "ranks_seen": comm.all_gather_object(comm.rank),
    "host": socket.gethostname(),
}
distutils.synchronize()
distutils.cleanup()
print("REPORT " + json.dumps(report), flush=True)
if "REPORT_DIR" in os.environ:  # ranks sharing one stdout (torchrun) also leave a file each
    with open(os.path.join(os.environ["REPORT_DIR"], f"report-{report['rank']}.json"), "w") as handle:
        json.dump(report, handle)
