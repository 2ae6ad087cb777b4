"""A torchrun worker for tests/pipeline/test_distributed.py: trains the jobs given as JSON, in order, in one
process group. A job is {"config": YAML or null, "overrides": [...]} or {"resume": RUN_DIR}, with an optional
"stop": [epoch, batch, rank] (that rank alone is asked to stop, as a signal would) or "die": [epoch, batch, rank]
(that rank exits at once). A RunError (a lost rank, say) ends the rank as the command line does: one line, exit 2.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py '{"jobs": [...]}'
"""

import json
import os
import sys

from eqprop.errors import RunError
from eqprop.training import distributed
from eqprop.training.config import load_config
from eqprop.training.trainer import Interrupted, Trainer


def main() -> None:
    for job in json.loads(sys.argv[1])["jobs"]:

        def hook(trainer, epoch, batch, job=job):
            rank = trainer.dist.rank
            if job.get("stop") == [epoch, batch, rank]:
                trainer._stop = "SIGTERM"  # what the signal handler does
            if job.get("die") == [epoch, batch, rank]:
                os._exit(7)

        if "resume" in job:
            trainer = Trainer.resume(job["resume"], callbacks=[hook], log=print)
        else:
            trainer = Trainer(load_config(job.get("config"), job["overrides"]), callbacks=[hook], log=print)
        try:
            trainer.fit()
        except Interrupted as exc:
            print(f"rank {trainer.dist.rank}: {exc}", flush=True)
        except RunError as exc:
            print(f"eqprop: error: {exc}", file=sys.stderr, flush=True)
            distributed.exit_process(2)
    distributed.finish(distributed.context())
    distributed.exit_process(0)


if __name__ == "__main__":
    main()
