"""The Slurm backend: the "slurm" settings (config.py), the sbatch scripts and arrays
(scripts.py), squeue/sacct/scontrol (queue.py), and the submissions that run the planner's
tasks (backend.py); run.py ties them into one run.

It imports the runner's shared parts (commands, config, jobs, output, plan, report); never
the SSH backend.
"""
