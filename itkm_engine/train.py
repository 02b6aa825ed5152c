"""Multi-process training: ``torchrun --nproc-per-node N -m itkm_engine.train WORKSPACE [options]``.

Takes the same options as ``itkm train`` (see ``itkm train --help``) and goes through the same
entry point (:func:`itkm_engine.train_request.run_training`): rank 0 holds the workspace's writer
lock, resolves and checks the request and writes config.toml; the other ranks open it read-only
and receive rank 0's settings (or its refusal).  On a machine without GPUs the processes use the
gloo backend on the CPU (that is how the tests run it).
"""

from __future__ import annotations

import sys

from .cli import build_parser
from .console import ConsoleReporter
from .distributed import init_from_env, shutdown
from .errors import ItkmError
from .progress import Reporter
from .train_request import TrainRequest, check_request, run_training
from .workspace import Workspace


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    dist = init_from_env()
    try:
        import torch

        req = TrainRequest.from_args(a)
        check_request(req)  # the same answer on every rank (same options, same files): refused at once
        device = torch.device(f"cuda:{dist.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        if dist.main:
            ws = Workspace.open(a.workspace)
        dist.barrier()  # rank 0 has created / migrated / locked the workspace
        if not dist.main:
            ws = Workspace.open(a.workspace, readonly=True)
        with ws:
            rep = ConsoleReporter("train", a.quiet) if dist.main else Reporter(job="train")
            results = run_training(ws, req, reporter=rep, dist=dist, device=device)
            if dist.main:
                for r in results:
                    print(f"round {r.round} done in {r.seconds:.0f} s on {dist.world} processes -> {r.checkpoint}")
        return 0
    except ItkmError as exc:
        print(f"itkm train (rank {dist.rank}): {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown(dist)


if __name__ == "__main__":
    sys.exit(main())
