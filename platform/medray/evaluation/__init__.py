"""Evaluation: metrics, plots and self-contained HTML reports (no Ray, no torch).

* :mod:`medray.evaluation.metrics` -- classification, regression and segmentation metrics in pure
  numpy (float64), with streaming accumulators (:class:`~medray.evaluation.metrics.SegmentationMeter`,
  :class:`~medray.evaluation.metrics.ClassificationMeter`) for validation sets of any size.
* :mod:`medray.evaluation.plots` -- matplotlib (Agg) figures as PNG bytes: ROC, PR, confusion matrix,
  reliability diagram, scatter, histograms, bars, training curves, mask/heatmap overlays, image grids.
* :mod:`medray.evaluation.report` -- :func:`~medray.evaluation.report.write_report` writes one offline
  ``report.html`` (images embedded as data URIs) and ``metrics.json`` to a local path or any fsspec URI.

The submodules are imported explicitly (``from medray.evaluation import metrics``); this package
initialiser imports nothing, so using the metrics never loads matplotlib.
"""
