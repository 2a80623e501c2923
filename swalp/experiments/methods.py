"""The four methods the paper compares (arXiv 1904.11943, the columns of its result tables):
full-precision SGD and its average (SWA), low-precision SGD and its average (SWALP)."""

LABELS = {"sgd_fp": "SGD-FP", "swa_fp": "SWA-FP", "sgd_lp": "SGD-LP", "swalp": "SWALP"}
METHODS = tuple(LABELS)  # the order of every table and plot
