"""The SSH backend: hosts as objects (shell.py, connection.py), reaching and checking them
(hosts.py, hostsync.py), their GPUs (gpu_watch.py), copies home and out (transfer.py), and the
slots that run the planner's tasks (backend.py: the methods runner.driver calls); run.py reaches
and checks the hosts.

It imports the runner's shared parts (check, commands, config, driver, ending, jobs, output, packing, plan, report,
requirements) and paramiko (only for a remote server: local runs need none); the Slurm backend never imports it.
"""
