"""The Slurm backend: the "slurm" settings (config.py), the sbatch scripts and arrays
(scripts.py), squeue/sacct/scontrol (queue.py), and the submissions that run the planner's
tasks (backend.py: the methods runner.driver calls); run.py opens a run (resume, preflight, limits).

It imports the runner's shared parts (check, commands, config, driver, ending, jobs, output, plan, report,
requirements); never the SSH backend.
"""
