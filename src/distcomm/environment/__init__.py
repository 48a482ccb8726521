"""Where this process runs: the launcher's variables and the job, devices, which backend to use, and the configuration of a job."""
