"""`trainwise report`: the comparison of a sweep or an experiment, built from MLflow alone (`build.py`), from the
runs it collects (`collect.py`), as a table (`table.py`) and plots (`plots.py`)."""

from trainwise.report.build import Report, build_report

__all__ = ["Report", "build_report"]
