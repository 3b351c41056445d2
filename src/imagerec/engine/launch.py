"""What the launcher (torchrun, SLURM's srun, or Fabric itself) says about this process before Fabric starts.

Fabric trusts `--devices` and `--num-nodes` to describe the processes an outside launcher started. When they do not
(torchrun with four processes and `--devices 2`), Fabric raises a ValueError deep inside `launch()`, or, for one
device, does not look at all, and every process trains and writes a run of its own. `check_launcher` refuses that
before anything is read or written.
"""

from __future__ import annotations

import os
import re

import torch

from imagerec.errors import UserError


def _count(name: str) -> int | None:
    """A count from the environment ("4"; SLURM may write "4(x2)", repeated per node); None when unset."""
    found = re.match(r"\d+", os.environ.get(name, ""))
    return int(found.group()) if found else None


def _srun_tasks() -> int | None:
    """How many tasks the SLURM job runs, as Lightning counts them (None outside SLURM, or in an interactive job)."""
    if os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):  # Lightning's own test for an interactive job
        return None
    return _count("SLURM_NTASKS")


def check_launcher(devices: int, num_nodes: int) -> None:
    """Raise a UserError when `devices` × `num_nodes` is not the set of processes torchrun or srun started."""
    count = devices * num_nodes
    wanted = f"--devices {devices} --num-nodes {num_nodes} ask for {count} process{'es' if count != 1 else ''}"
    if torch.distributed.is_available() and torch.distributed.is_torchelastic_launched():
        world, local = int(os.environ["WORLD_SIZE"]), _count("LOCAL_WORLD_SIZE")
        if world != devices * num_nodes or (local is not None and local != devices):
            per_node = f"{local} per node, " if local is not None else ""
            raise UserError(
                f"{wanted}, but torchrun started {per_node}{world} in all; pass --devices equal to torchrun's "
                f"--nproc-per-node{f' ({local})' if local is not None else ''} and --num-nodes equal to its --nnodes "
                f"({world // local if local else world})"
            )
        return
    tasks = _srun_tasks()
    if tasks is None:
        return
    per_node, nodes = _count("SLURM_NTASKS_PER_NODE"), _count("SLURM_NNODES")
    if tasks != devices * num_nodes or per_node not in (None, devices) or nodes not in (None, num_nodes):
        raise UserError(
            f"{wanted}, but this SLURM job has {tasks} tasks (SLURM_NTASKS) on {nodes} nodes; start it as "
            "`srun imagerec train ...` with --devices equal to #SBATCH --ntasks-per-node and --num-nodes equal to "
            "#SBATCH --nodes"
        )


def launch_rank(devices: int) -> int:
    """This process's global rank before Fabric launches: RANK from torchrun; NODE_RANK × devices + LOCAL_RANK
    under Fabric's own launcher (its child processes, or a node started by hand with NODE_RANK); SLURM_PROCID
    under srun; else 0. Lightning's own guess before launch reads LOCAL_RANK alone, which is 0 on every node."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if "LOCAL_RANK" in os.environ or "NODE_RANK" in os.environ:
        return int(os.environ.get("NODE_RANK", 0)) * devices + int(os.environ.get("LOCAL_RANK", 0))
    return int(os.environ.get("SLURM_PROCID", 0))
