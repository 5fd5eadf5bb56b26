"""What a run writes, for every task: the staged output folder, the manifest's shared parts, the
competition submissions and the HTML pieces both reports use."""
