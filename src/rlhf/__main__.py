"""`python -m rlhf ...`, and so `torchrun --standalone --nproc-per-node N -m rlhf <command> ...`."""

from rlhf.cli import main
from rlhf.distributed import exit_after_success

if __name__ == "__main__":
    main()  # a mistake exits here (SystemExit with status 2), the normal way
    exit_after_success()
