"""The paper's CIFAR accuracy tables (Ye et al.), as data: the targets of flags/ and tools/reproduce_table.py.

TABLES[table][row][(dataset, ratio)] = top-1 (%) on the balanced test set; None where the
paper has no number. Table 2 is long-tailed imbalance, Table 7 step imbalance; Table 6 gives
the long-tailed ERM / re-sampling / re-weighting / CDT rows with every post-processing to two
decimals. Rows marked † in the paper are its own reproductions, # are numbers it quotes from
Cao et al. (LDAM) and Cui et al. (CB).
"""

from __future__ import annotations

DATASETS = ("cifar10", "cifar100")
RATIOS = (200, 100, 10)
COLUMNS = tuple((d, r) for d in DATASETS for r in RATIOS)


def _row(*values):
    return dict(zip(COLUMNS, values, strict=True))


TABLES = {
    "2": {
        "Focal": _row(65.3, 70.4, 86.8, 35.6, 38.7, 55.8),
        "CB": _row(68.9, 74.6, 87.5, 36.2, 39.6, 58.0),
        "LDAM": _row(69.4, 73.4, 87.0, 36.7, 39.6, 56.9),
        "LDAM-DRW": _row(74.6, 77.0, 88.2, 39.5, 42.0, 58.7),
        "ERM": _row(65.6, 71.1, 87.2, 35.9, 40.1, 56.9),
        "Re-sampling": _row(64.4, 71.2, 86.5, 30.6, 34.7, 54.2),
        "Re-weighting": _row(68.6, 72.6, 87.1, 35.0, 40.5, 57.3),
        "CDT": _row(74.7, 79.4, 88.4, 37.8, 44.3, 58.7),
        "ERM+‖w‖^τ": _row(70.3, 75.1, 87.8, 39.3, 43.6, 57.4),
        "ERM+N_c^τ": _row(75.2, 77.8, 88.3, 40.1, 44.0, 58.1),
        "CDT+‖w‖^τ": _row(75.3, 79.4, 88.5, 38.8, 44.5, 58.7),
        "CDT+N_c^τ": _row(75.5, 79.4, 88.4, 38.1, 44.3, 58.7),
    },
    "7": {
        "Focal": _row(None, 63.9, 83.6, None, 38.6, 53.5),
        "CB": _row(None, 61.9, 84.6, None, 33.8, 53.1),
        "LDAM": _row(60.0, 66.6, 85.0, 39.1, 39.6, 56.3),
        "LDAM-DRW": _row(73.6, 76.9, 87.8, 42.4, 45.4, 59.5),
        "ERM": _row(60.0, 65.3, 85.1, 38.7, 39.9, 54.6),
        "Re-sampling": _row(61.3, 65.0, 84.5, 38.0, 38.4, 52.1),
        "Re-weighting": _row(62.6, 67.3, 85.8, 38.2, 40.1, 55.7),
        "CDT": _row(67.6, 76.5, 88.8, 39.0, 43.5, 59.6),
        "ERM+‖w‖^τ": _row(68.8, 73.0, 87.3, 43.2, 45.2, 57.7),
        "ERM+N_c^τ": _row(74.7, 77.6, 88.3, 41.6, 46.5, 59.8),
        "CDT+‖w‖^τ": _row(74.1, 76.8, 88.8, 39.7, 46.1, 59.6),
        "CDT+N_c^τ": _row(74.4, 76.5, 88.8, 39.6, 43.8, 59.6),
    },
    "6": {
        "ERM": _row(65.62, 71.08, 87.21, 35.91, 40.07, 56.93),
        "Re-sampling": _row(64.41, 71.22, 86.52, 30.58, 34.74, 53.48),
        "Re-weighting": _row(66.53, 72.63, 87.20, 35.03, 40.51, 57.32),
        "CDT": _row(74.65, 79.36, 88.43, 37.79, 44.26, 58.71),
        "ERM+‖w‖^τ": _row(70.26, 75.13, 87.77, 39.33, 43.62, 57.41),
        "Re-sampling+‖w‖^τ": _row(64.41, 71.22, 86.52, 30.58, 34.74, 53.48),
        "Re-weighting+‖w‖^τ": _row(66.55, 74.86, 87.76, 37.63, 42.81, 57.71),
        "CDT+‖w‖^τ": _row(75.27, 79.39, 88.45, 38.78, 44.48, 58.71),
        "ERM+N_c^τ": _row(75.21, 77.78, 88.27, 40.08, 44.01, 58.08),
        "Re-sampling+N_c^τ": _row(66.42, 74.84, 87.16, 32.71, 37.06, 55.13),
        "Re-weighting+N_c^τ": _row(68.13, 78.65, 88.23, 38.05, 43.23, 58.56),
        "CDT+N_c^τ": _row(75.53, 79.36, 88.43, 38.14, 44.26, 58.71),
        "ERM+NCM": _row(73.16, 77.02, 88.20, 39.42, 42.79, 55.87),
        "Re-sampling+NCM": _row(66.02, 72.28, 87.31, 31.97, 36.10, 54.06),
        "Re-weighting+NCM": _row(66.31, 76.95, 88.04, 37.25, 42.46, 55.78),
        "CDT+NCM": _row(74.75, 78.78, 88.05, 37.89, 42.69, 55.74),
    },
}

# Table 9 (long-tailed, rho = 100): selected on the test set vs on K = 3 held out per class.
TABLE_9 = {
    ("cifar10", "CDT"): (79.36, 79.11),
    ("cifar10", "CDT+N_c^τ"): (79.36, 79.31),
    ("cifar100", "CDT"): (44.26, 43.92),
    ("cifar100", "CDT+N_c^τ"): (44.26, 43.92),
}

# Table 5 (long-tailed CIFAR-10, rho = 100): rows feature data, columns classifier data.
TABLE_5 = {
    ("balanced", "balanced"): 85.6,
    ("balanced", "imbalanced"): 82.2,
    ("imbalanced", "balanced"): 77.7,
    ("imbalanced", "imbalanced"): 71.1,
}

# Training objectives: the method row -> the flagfile suffix that trains it. A post-processed
# row "<method>+<post>" reads the post_hoc section of the same run's results.json.
METHOD_FLAGFILES = {
    "ERM": "ce",
    "Re-sampling": "resample",
    "Re-weighting": "reweight",
    "Focal": "focal",
    "CB": "cb",
    "LDAM": "ldam",
    "LDAM-DRW": "ldam_drw",
    "CDT": "cdt",
}
POST_HOC_KEYS = {"‖w‖^τ": "w_norm", "N_c^τ": "nc_tau", "NCM": "ncm"}
