"""Run folders (config, JSON metrics, CSV histories, figures, markdown report)."""

from attnopt.report.runs import RunDir, atomic_write_bytes, atomic_torch_save, make_run_dir

__all__ = ["RunDir", "make_run_dir", "atomic_write_bytes", "atomic_torch_save"]
