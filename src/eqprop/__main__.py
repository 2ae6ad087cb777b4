"""``python -m eqprop`` runs the command line."""

from .cli import main
from .training.distributed import exit_process

code = main()
exit_process(code)  # under torchrun: skip the interpreter's teardown (see exit_process)
raise SystemExit(code)
