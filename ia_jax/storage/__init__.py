"""Remote storage: `gs://` helpers shared by stage datasets, checkpoints and exports."""
